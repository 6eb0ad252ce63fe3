//! Wiring of a control-plane member (store replica, API server, scheduler, controllers) and the
//! `skiff-master` CLI: `run`, `init`, `snapshot save|restore`, `member list|add|remove`.
//!
//! Empty until the replicated store lands; the binary arrives with its first subcommand.
