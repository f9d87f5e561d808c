//! The `pluginflow` command line. Thin: parsing flags, wiring outputs, exit codes.

use operators::sync::lock;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use operators::plugin::LogSink;
use operators::plugin::log::JsonLinesLogSink;
use pluginflow::config::PipelineConfig;
use pluginflow::kafka::KafkaLogSink;
use pluginflow::try_plugin::{self, TryOptions};

/// Run PostHog plugins ("apps") over analytics events as a timely dataflow.
#[derive(Parser, Debug)]
#[command(name = "pluginflow", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Format of pluginflow's own log on stderr: `text` (colours only on a terminal, none when
    /// NO_COLOR is set) or `json` (one object per line). RUST_LOG filters it (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// pluginflow's own log on stderr, filtered by RUST_LOG.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder.with_ansi(std::io::stderr().is_terminal() && !no_color).init();
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the pipeline described by a configuration file (see docs/config.md).
    Run(RunArgs),
    /// Run one plugin's processEvent over JSON-lines events: one output line per input line.
    Try(TryArgs),
}

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
struct RunArgs {
    /// The pipeline configuration file (TOML).
    config: PathBuf,
    /// Worker threads in this process (1 to 1024).
    #[arg(short = 'w', long = "workers", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: u16,
    /// Number of processes in a timely cluster (each runs the same command; 1 to 1024).
    #[arg(short = 'n', long = "processes", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    processes: u16,
    /// This process's index in the cluster, from 0.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    process: usize,
    /// File with one `host:port` per line, one per process of the cluster.
    #[arg(short = 'h', long = "hostfile")]
    hostfile: Option<PathBuf>,
    /// Do not print the progress line on stderr.
    #[arg(long)]
    no_progress: bool,
    /// Continue a recorded-log run that stopped (a crash, kill -9, a stop) where its last
    /// checkpoint says: the outputs are cut back to what was complete and each worker reads on
    /// from its position. Needs the same input, outputs, state folder and -w/-n. Plugin state
    /// is not rolled back (see docs/config.md, "Restarting a recorded-log run").
    #[arg(long)]
    resume: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args, Debug)]
struct TryArgs {
    /// The plugin folder (plugin.json and index.js or index.ts).
    plugin_dir: PathBuf,
    /// Config values as a JSON object, e.g. '{"greeting":"hi"}'.
    #[arg(long)]
    config: Option<String>,
    /// An attachment for a config field of type attachment: KEY=PATH (repeatable).
    #[arg(long = "attachment", value_parser = parse_attachment)]
    attachments: Vec<(String, PathBuf)>,
    /// MaxMind City database for geoip.locate.
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Read events from this file instead of standard input.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Deadline of one plugin call, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// The hook to run: processEvent (each input line, the event printed), onEvent (each input
    /// line), exportEvents (all input lines in one batch), runEveryMinute, runEveryHour,
    /// runEveryDay or job:NAME (once, no input read). Hooks other than processEvent print one
    /// JSON line per call ({"hook","attempts","ok","error"?}) and exit 1 if a call failed.
    #[arg(long, default_value = "processEvent")]
    hook: try_plugin::TryHook,
    /// The payload of the job run by --hook job:NAME, as JSON (default {}).
    #[arg(long)]
    payload: Option<String>,
    /// Wait before the first retry of onEvent, exportEvents or a job, in milliseconds, doubling
    /// after each (default: PostHog's 5,000 for onEvent and jobs, 6,000 for exportEvents).
    #[arg(long)]
    retry_base_ms: Option<u64>,
    /// Refuse a configuration that `pluginflow run` would refuse (a missing required value, a
    /// value outside choices); without it, `try` warns and runs the plugin with what it got.
    #[arg(long)]
    strict: bool,
}

fn parse_attachment(s: &str) -> Result<(String, PathBuf), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=PATH, got '{s}'"))?;
    if k.is_empty() || v.is_empty() {
        return Err(format!("expected KEY=PATH, got '{s}'"));
    }
    Ok((k.to_string(), PathBuf::from(v)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Try(args) => try_cmd(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    if args.process >= usize::from(args.processes) {
        eprintln!("pluginflow: --process {} is not below --processes {} (processes are numbered from 0)", args.process, args.processes);
        return ExitCode::from(2);
    }
    let mut config = match PipelineConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pluginflow: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if config.input.follow && (args.workers > 1 || args.processes > 1) {
        // Each worker would measure the growing log for its share at its own moment (lines
        // lost or read twice between shares), and those done with their share would stop
        // serving their part of a run that never ends (scheduled tasks, metrics, flushes).
        eprintln!("pluginflow: [input] follow reads the log with one worker: run it with -w 1 and without -n");
        return ExitCode::from(2);
    }
    if args.processes > 1 {
        // Each process of a cluster writes its own files (they may share a folder).
        config.per_process_outputs(args.process);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cancel = Arc::new(AtomicBool::new(false));
    let (flag, cancel_flag) = (stop.clone(), cancel.clone());
    let grace = std::time::Duration::from_millis(config.runtime.shutdown_grace_ms);
    // First signal: stop reading and finish what is in flight; plugin calls still running after
    // the grace period are ended. A second signal ends them at once.
    let handler = move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("pluginflow: second signal: ending plugin calls now");
            cancel_flag.store(true, Ordering::SeqCst);
            return;
        }
        eprintln!("pluginflow: stopping: no more input is read; plugin calls are ended after {} ms", grace.as_millis());
        let cancel = cancel_flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            cancel.store(true, Ordering::SeqCst);
        });
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        eprintln!("pluginflow: cannot install the signal handler: {e}");
        return ExitCode::from(1);
    }
    // The state first: its lock keeps a second pipeline off this state folder before any output
    // (the plugin log included) is opened and truncated.
    let store = match pluginflow::run::open_store(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pluginflow: {e:#}");
            return ExitCode::from(2);
        }
    };
    let peers = usize::from(args.workers) * usize::from(args.processes);
    let resume = match resume_plan(&config, &*store, peers, args.resume) {
        Ok(Some(plan)) => plan,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pluginflow: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (logs, kafka_logs) = match open_logs(&config, resume.is_some()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pluginflow: {e:#}");
            return ExitCode::from(2);
        }
    };
    let shared = match pluginflow::run::prepare_with_store(config, logs, stop, store, resume) {
        Ok(s) => pluginflow::run::Shared { cancel, ..s },
        Err(e) => {
            eprintln!("pluginflow: {e:#}");
            return ExitCode::from(2);
        }
    };
    let _http = match &shared.config.http {
        Some(h) => match pluginflow::http::HttpServer::start(h.listen, shared.http.clone()) {
            Ok(server) => {
                eprintln!("pluginflow: http endpoint on http://{}/ (healthz, metrics, plugins)", server.addr());
                Some(server)
            }
            Err(e) => {
                eprintln!("pluginflow: cannot start the http endpoint: {e:#}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut timely_args = vec!["pluginflow".to_string(), "-w".into(), args.workers.to_string()];
    timely_args.extend(["-n".into(), args.processes.to_string(), "-p".into(), args.process.to_string()]);
    if let Some(h) = &args.hostfile {
        timely_args.extend(["-h".into(), h.display().to_string()]);
    }
    let timely_config = match timely::Config::from_args(timely_args.into_iter()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pluginflow: invalid cluster flags: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let stats = shared.stats.clone();
    let finished = Arc::new(AtomicBool::new(false));
    let progress = (!args.no_progress).then(|| spawn_progress(stats.clone(), finished.clone(), started));
    let http_state = shared.http.clone();
    let result = pluginflow::run::run(shared, timely_config);
    finished.store(true, Ordering::SeqCst);
    if let Some(p) = progress {
        let _ = p.join();
    }
    if let Some(k) = &kafka_logs
        && let Err(e) = k.flush(Duration::from_secs(30))
    {
        eprintln!("pluginflow: {e:#}");
    }
    match result {
        Ok(stats) => {
            eprint!("{}", stats.summary().render(started.elapsed().as_secs_f64()));
            for ((config, team, worker), status) in lock(&http_state.plugins).iter() {
                if let Some(reason) = &status.disabled {
                    eprintln!("  disabled: {} ({config}) team {team} on worker {worker}: {reason}", status.plugin);
                }
                if !status.loaded {
                    eprintln!("  not loaded: {} ({config}) team {team} on worker {worker}", status.plugin);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pluginflow: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn spawn_progress(stats: Arc<pluginflow::stats::Stats>, finished: Arc<AtomicBool>, started: Instant) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = Instant::now();
        while !finished.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(2) {
                last = Instant::now();
                eprintln!("{}", stats.summary().progress_line(started.elapsed().as_secs_f64()));
            }
        }
    })
}

/// What `--resume` does: `Ok(Some(Some(checkpoint)))` continue from it (the outputs are cut back
/// here), `Ok(Some(None))` start at the beginning, `Ok(None)` nothing to do (the recorded run
/// finished). Without `--resume`, a run that stopped before its end is pointed out.
fn resume_plan(
    config: &PipelineConfig,
    store: &dyn state::StateStore,
    peers: usize,
    resume: bool,
) -> anyhow::Result<Option<Option<pluginflow::resume::Checkpoint>>> {
    use pluginflow::resume::{self, Plan};
    if !resume {
        // Every plain run forgets the checkpoint (its outputs are rewritten): say so when it was
        // of a run that could have been continued, whether or not this run keeps checkpoints.
        if let Ok(Some(cp)) = resume::recorded(store)
            && !cp.complete
        {
            eprintln!(
                "pluginflow: the last run over this state stopped before the end of {}; this run starts at the beginning \
                 and rewrites the outputs (plugin state is kept); `--resume` would continue it instead",
                cp.input.display()
            );
        }
        return Ok(Some(None));
    }
    match resume::plan(config, store, peers)? {
        Plan::Fresh => {
            eprintln!("pluginflow: --resume: no checkpoint in this state folder; starting at the beginning");
            Ok(Some(None))
        }
        Plan::Finished => {
            eprintln!("pluginflow: --resume: the recorded run read its whole input and finished; nothing to resume");
            Ok(None)
        }
        Plan::From(mut cp) => {
            resume::restore_outputs(store, &mut cp)?;
            let dropped = resume::drop_queued_retries(store)?;
            let at: Vec<String> = cp.positions.iter().map(|(w, p)| format!("worker {w} at byte {p}")).collect();
            eprintln!("pluginflow: --resume: continuing {} ({})", cp.input.display(), at.join(", "));
            if dropped > 0 {
                eprintln!("pluginflow: --resume: {dropped} queued retries dropped: their events are read again");
            }
            Ok(Some(Some(*cp)))
        }
    }
}

/// The plugin-log sink, and the same sink as Kafka's when it is one (to flush before exiting).
type OpenedLogs = (Arc<dyn LogSink>, Option<Arc<KafkaLogSink>>);

/// Plugin logs go to `kafka.logs_topic` when set, else to the `output.logs` file. The Kafka sink
/// is also returned so `run` can flush it before exiting. A resumed run appends to the file.
fn open_logs(config: &PipelineConfig, append: bool) -> anyhow::Result<OpenedLogs> {
    if let Some((kafka, topic)) = config.kafka.as_ref().and_then(|k| k.logs_topic.as_deref().map(|t| (k, t))) {
        let sink = Arc::new(KafkaLogSink::open(kafka, topic)?);
        return Ok((sink.clone(), Some(sink)));
    }
    let file = pluginflow::io::open_output_with(&config.output.logs, append)?;
    Ok((Arc::new(JsonLinesLogSink::new(SharedWrite(file))), None))
}

/// Lets the log sink write into a shared output.
struct SharedWrite(pluginflow::io::SharedWriter);

impl std::io::Write for SharedWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        lock(&self.0).flush()
    }
}

fn try_cmd(args: TryArgs) -> ExitCode {
    if let Some(Err(e)) = args.payload.as_deref().map(serde_json::from_str::<serde_json::Value>) {
        eprintln!("pluginflow try: --payload is not valid JSON: {e}");
        return ExitCode::from(2);
    }
    let opts = TryOptions {
        dir: args.plugin_dir,
        config_json: args.config,
        attachments: args.attachments,
        geoip: args.geoip,
        call_timeout: Some(Duration::from_millis(args.timeout_ms)),
        strict: args.strict,
    };
    let logs = Arc::new(JsonLinesLogSink::new(std::io::stderr()));
    let mut warn = |w: String| eprintln!("pluginflow try: warning: {w}");
    let (_runtime, mut instance) = match try_plugin::load(&opts, &args.hook, logs, &mut warn) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("pluginflow try: {}", e.0.replace('\n', " "));
            return ExitCode::from(2);
        }
    };
    let mut input: Box<dyn BufRead> = match &args.input {
        Some(path) => match std::fs::File::open(path) {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(e) => {
                eprintln!("pluginflow try: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout().lock();
    let result = match &args.hook {
        try_plugin::TryHook::ProcessEvent => try_plugin::run_lines(&mut instance, input, stdout).map(|_| 0),
        hook => {
            let run = try_plugin::HookRun {
                hook: hook.clone(),
                payload: args.payload,
                retry_base: args.retry_base_ms.map(Duration::from_millis),
            };
            let reads = matches!(hook, try_plugin::TryHook::OnEvent | try_plugin::TryHook::ExportEvents);
            try_plugin::run_hook(&mut instance, &run, if reads { Some(&mut *input) } else { None }, stdout)
        }
    };
    let teardown = instance.teardown();
    match (result, teardown) {
        (Ok(0), Ok(())) => ExitCode::SUCCESS,
        (Ok(failed), Ok(())) => {
            eprintln!("pluginflow try: {failed} call(s) failed");
            ExitCode::from(1)
        }
        (Err(e), _) => {
            eprintln!("pluginflow try: {e}");
            ExitCode::from(1)
        }
        (Ok(_), Err(e)) => {
            eprintln!("pluginflow try: teardownPlugin failed: {}: {}", e.name, e.message);
            ExitCode::from(1)
        }
    }
}
