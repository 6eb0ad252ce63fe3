//! `skiff-fuzz decode|patch --iterations N [--seed S] [--corpus DIR]...`: runs the seed corpus and
//! N mutated inputs through a target; inputs that panic are written to `--artifacts` and the
//! exit status is 1.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use skiff_fuzz::{Target, default_corpus, fuzz, load_corpus};

#[derive(Debug, Parser)]
#[command(about = "Mutation fuzzer for the apiserver's request decoding and patch engines")]
struct Args {
    /// Which parsers to exercise.
    #[arg(value_enum)]
    target: Target,
    /// Mutated inputs to run after the seeds.
    #[arg(long, default_value_t = 100_000, env = "SKIFF_FUZZ_ITERATIONS")]
    iterations: u64,
    /// RNG seed (a run is reproducible from its seed).
    #[arg(long, default_value_t = 1, env = "SKIFF_FUZZ_SEED")]
    seed: u64,
    /// Seed corpus directories (default: the target's corpus in this checkout).
    #[arg(long)]
    corpus: Vec<PathBuf>,
    /// Where inputs that panic are saved.
    #[arg(long, default_value = "target/fuzz-artifacts", env = "SKIFF_FUZZ_ARTIFACTS")]
    artifacts: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("fuzz crate has no parent directory")?;
    let dirs = if args.corpus.is_empty() {
        default_corpus(args.target, &workspace)
    } else {
        args.corpus.clone()
    };
    let corpus = load_corpus(args.target, &dirs)
        .with_context(|| format!("reading the seed corpus from {dirs:?}"))?;
    anyhow::ensure!(!corpus.is_empty(), "the seed corpus in {dirs:?} is empty");
    // Keep the default panic hook quiet: crashes are reported below with their inputs.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let report = fuzz(&corpus, args.iterations, args.seed);
    let elapsed = started.elapsed();
    let _ = std::panic::take_hook();
    println!(
        "{:?}: {} executions ({} seeds) in {:.1}s, {:.0}/s; accepted {}, refused {}, crashes {}",
        args.target,
        report.executions,
        corpus.len(),
        elapsed.as_secs_f64(),
        f64::from(u32::try_from(report.executions).unwrap_or(u32::MAX)) / elapsed.as_secs_f64(),
        report.accepted,
        report.refused,
        report.crashes.len()
    );
    if report.crashes.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&args.artifacts)
        .with_context(|| format!("creating {}", args.artifacts.display()))?;
    for (i, input) in report.crashes.iter().enumerate() {
        let path = args.artifacts.join(format!("{:?}-seed{}-{i}.bin", input.media, args.seed));
        std::fs::write(&path, &input.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("crash: {} ({})", path.display(), input.media.content_type());
    }
    std::process::exit(1);
}
