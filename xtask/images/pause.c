// SPDX-License-Identifier: Apache-2.0
/*
 * The pod sandbox process: holds the pod's namespaces open and does nothing else.
 * Sleeps in pause(); exits 0 on SIGINT/SIGTERM; reaps orphaned children (it is PID 1 when the
 * pod shares a PID namespace). Built with `gcc -static` by `cargo xtask images`.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_exit_signal(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	struct sigaction exit_action = { .sa_handler = on_exit_signal };
	struct sigaction child_action = { .sa_handler = on_child, .sa_flags = SA_NOCLDSTOP };

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("skiff pause");
		return 0;
	}
	if (getpid() != 1)
		fputs("warning: pause should be the first process\n", stderr);
	if (sigaction(SIGINT, &exit_action, NULL) < 0 || sigaction(SIGTERM, &exit_action, NULL) < 0 ||
	    sigaction(SIGCHLD, &child_action, NULL) < 0) {
		perror("sigaction");
		return 1;
	}
	for (;;)
		pause();
}
