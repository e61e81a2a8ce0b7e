//! `banger`, the command-line client of bangerd.
//!
//! Every VM and image command speaks the daemon's REST API over its Unix socket
//! ([`client::Client`]); the daemon is started on demand when nothing answers
//! ([`daemon::ensure_running`]). Local commands (`doctor`, `config show`, `completions`,
//! `version`) need no daemon. Exit codes mean something (see [`exit`]).

pub mod client;
pub mod daemon;
pub mod guest;
pub mod images;
pub mod observe;
pub mod output;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use banger_api::{
    CreateVmRequest, EditVmRequest, ErrorCode, Image, Operation, OperationStatus, Vm,
};
use banger_config::{Environment, LoadedConfig};
use clap::{Args, CommandFactory, Parser, Subcommand};
use hyper::Method;

use crate::client::{Client, ClientError};

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The operation ran and failed (a stage failed, a check failed).
    pub const FAILED: u8 = 1;
    /// Bad usage or invalid input (clap's own usage errors also exit 2).
    pub const USAGE: u8 = 2;
    /// No such VM, image or operation.
    pub const NOT_FOUND: u8 = 3;
    /// Conflicts with current state (name taken, VM running, ambiguous prefix, image in use).
    pub const CONFLICT: u8 = 4;
    /// The daemon is unreachable, could not be started, or failed internally.
    pub const DAEMON: u8 = 5;
    /// The host cannot satisfy the request (no VMM, not enough CPUs/memory/disk).
    pub const UNSATISFIABLE: u8 = 6;
}

/// banger: developer sandboxes as microVMs.
#[derive(Debug, Parser)]
#[command(name = "banger", version, about, propagate_version = true)]
pub struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect and control VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Inspect and delete images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Check that this host can run banger's VMs, with a fix for each problem.
    Doctor,
    /// Start, stop or inspect the daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Show configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print an OpenSSH config `Host` block for every VM (for `Include` in ~/.ssh/config).
    SshConfig,
    /// Print (or `--open`) the web UI's login link.
    Web {
        /// Open it with xdg-open.
        #[arg(long)]
        open: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the CLI's and the daemon's versions.
    Version,
}

/// `banger vm ...`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// exec, cp, run, ssh (see [`guest::GuestCommand`]).
    #[command(flatten)]
    Guest(guest::GuestCommand),
    /// logs, stats (see [`observe::ObserveCommand`]).
    #[command(flatten)]
    Observe(observe::ObserveCommand),
    /// Create a VM and start it (live stage progress).
    Create(CreateArgs),
    /// List VMs.
    #[command(alias = "ls")]
    List,
    /// Show one VM.
    Show {
        /// Name, id or unique prefix.
        name: String,
    },
    /// Start stopped VMs.
    Start {
        /// Names, ids or unique prefixes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop running VMs (graceful, then forced after the stop timeout).
    Stop {
        /// Names, ids or unique prefixes.
        #[arg(required = true)]
        names: Vec<String>,
        /// Kill at once instead of asking the guest.
        #[arg(long)]
        force: bool,
    },
    /// Restart running VMs.
    Restart {
        /// Names, ids or unique prefixes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete VMs and everything they own.
    #[command(alias = "rm")]
    Delete {
        /// Names, ids or unique prefixes.
        #[arg(required = true)]
        names: Vec<String>,
        /// Stop running VMs first.
        #[arg(long)]
        force: bool,
    },
    /// Forward a host port to a guest port (`HOST:GUEST[/udp]`), list a VM's forwards (no
    /// mapping), or remove one (`--remove HOST[/udp]`). Forwards listen on the daemon's
    /// `network.publish_address` (127.0.0.1 by default) and last as long as the VM.
    Port {
        /// Name, id or unique prefix.
        name: String,
        /// `HOST:GUEST`, `HOST:GUEST/udp`; lists the VM's forwards when absent.
        #[arg(conflicts_with = "remove")]
        mapping: Option<banger_api::PortForward>,
        /// Remove the forward of this host port (`PORT` or `PORT/udp`).
        #[arg(long, value_name = "HOST")]
        remove: Option<String>,
    },
    /// Change vCPUs, memory or work disk size of a stopped VM.
    Edit {
        /// Name, id or unique prefix.
        name: String,
        /// vCPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory, e.g. 2G.
        #[arg(long, value_parser = parse_size)]
        memory: Option<u64>,
        /// Work disk size (grow only), e.g. 20G.
        #[arg(long, value_parser = parse_size)]
        disk_size: Option<u64>,
    },
}

/// `banger vm create` options.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name (a DNS label); a readable random name when absent.
    #[arg(long)]
    pub name: Option<String>,
    /// Image name, id or unique prefix; `default_image` when absent.
    #[arg(long)]
    pub image: Option<String>,
    /// vCPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory, e.g. 1G or 512M.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Work disk size, e.g. 10G.
    #[arg(long, value_parser = parse_size)]
    pub disk_size: Option<u64>,
    /// Create without starting.
    #[arg(long)]
    pub no_start: bool,
    /// Forward a host port to the VM, `HOST:GUEST[/udp]` (repeatable).
    #[arg(long = "publish", short = 'p', value_name = "HOST:GUEST")]
    pub publish: Vec<banger_api::PortForward>,
    /// With no image on this host yet: bootstrap the default one without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `banger image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images.
    #[command(alias = "ls")]
    List,
    /// Show one image.
    Show {
        /// Name, id or unique prefix.
        name: String,
    },
    /// Delete an image (refused while VMs use it) and the files banger keeps for it.
    #[command(alias = "rm")]
    Delete {
        /// Name, id or unique prefix.
        name: String,
    },
    /// Register your own kernel + rootfs as an image (validated; your files stay yours).
    Register(images::RegisterArgs),
    /// Copy a registered image's files into banger's image store.
    Promote {
        /// Name, id or unique prefix.
        name: String,
    },
    /// Build a Debian image from Debian's packages (debootstrap; nothing mounted).
    Bootstrap(images::BootstrapArgs),
    /// Build a new image from a VM of another after a script and/or packages.
    Build(images::BuildArgs),
}

/// `banger daemon ...`
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start bangerd in the background if it is not running.
    Start,
    /// Ask bangerd to shut down (VMs keep running).
    Stop,
    /// Is bangerd running?
    Status,
}

/// `banger config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration and where each value came from.
    Show,
}

fn parse_size(s: &str) -> Result<u64, String> {
    banger_api::parse_size_mib(s).map_err(|e| e.to_string())
}

/// A failure at the edge: what to print and which exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// Already formatted text (ends with a newline).
    pub text: String,
}

impl Failure {
    fn new(code: u8, text: impl Into<String>) -> Self {
        let mut text = text.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Self { code, text }
    }
}

/// The exit code for an API error code.
pub fn exit_code_for(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::InvalidInput | ErrorCode::PayloadTooLarge | ErrorCode::UnsupportedMediaType => {
            exit::USAGE
        }
        ErrorCode::NotFound => exit::NOT_FOUND,
        ErrorCode::Conflict | ErrorCode::Ambiguous => exit::CONFLICT,
        ErrorCode::Unsatisfiable => exit::UNSATISFIABLE,
        ErrorCode::MethodNotAllowed | ErrorCode::Unauthorized | ErrorCode::Internal => exit::DAEMON,
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Api(api) => Failure::new(exit_code_for(api.code), output::api_error(&api)),
            other => Failure::new(exit::DAEMON, error_chain(&other)),
        }
    }
}

/// `error: outer\n  caused by: inner\n...`
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("error: {err}\n");
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(&format!("  caused by: {cause}\n"));
        next = cause.source();
    }
    out
}

/// Runs the CLI with `args` in `env`; returns the process exit code.
pub async fn run(args: Vec<String>, env: Environment) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let mut stdout = std::io::stdout().lock();
    match execute(cli, &env, &mut stdout).await {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            let _ = stdout.flush();
            eprint!("{}", failure.text);
            ExitCode::from(failure.code)
        }
    }
}

fn load_config(env: &Environment) -> Result<LoadedConfig, Failure> {
    banger_config::load(env).map_err(|err| Failure::new(exit::USAGE, error_chain(&err)))
}

fn json<T: serde::Serialize>(out: &mut impl Write, value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(exit::FAILED, format!("error: {e}")))?;
    writeln!(out, "{text}")
        .map_err(|e| Failure::new(exit::FAILED, format!("error: writing output: {e}")))
}

fn print(out: &mut impl Write, text: &str) -> Result<(), Failure> {
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::new(exit::FAILED, format!("error: writing output: {e}")))
}

/// Runs one parsed command, writing its normal output to `out`.
pub async fn execute(cli: Cli, env: &Environment, out: &mut impl Write) -> Result<(), Failure> {
    let as_json = cli.json;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "banger", out);
            Ok(())
        }
        Command::Version => {
            let loaded = load_config(env)?;
            let client = Client::new(loaded.config.socket_path());
            let daemon: Option<banger_api::Health> = client.get("/v1/health").await.ok();
            if as_json {
                json(
                    out,
                    &serde_json::json!({ "cli": env!("CARGO_PKG_VERSION"), "daemon": daemon }),
                )
            } else {
                let daemon = daemon
                    .map(|h| format!("{} (pid {})", h.version, h.pid))
                    .unwrap_or_else(|| "not running".into());
                print(
                    out,
                    &format!("banger {}\nbangerd {daemon}\n", env!("CARGO_PKG_VERSION")),
                )
            }
        }
        Command::Config(ConfigCommand::Show) => {
            let loaded = load_config(env)?;
            if as_json {
                json(out, &loaded.to_json())
            } else {
                print(out, &loaded.render())
            }
        }
        Command::Doctor => {
            let loaded = load_config(env)?;
            let report = banger_doctor::run(
                &banger_doctor::RealHost::new("/"),
                &doctor_inputs(&loaded.config),
            );
            if as_json {
                json(out, &report)?;
            } else {
                print(out, &report.render_human())?;
            }
            if report.worst() == banger_doctor::Status::Fail {
                Err(Failure::new(
                    exit::FAILED,
                    "doctor: some checks failed (see the fix lines above)",
                ))
            } else {
                Ok(())
            }
        }
        Command::Daemon(command) => {
            let loaded = load_config(env)?;
            daemon_command(command, &loaded, as_json, out).await
        }
        Command::Vm(command) => {
            let loaded = load_config(env)?;
            let client = daemon::ensure_running(&loaded.config).await?;
            // No image named and none on the host: offer the default image first.
            let default_image = match &command {
                VmCommand::Create(args) if args.image.is_none() => Some(args.yes),
                VmCommand::Guest(guest::GuestCommand::Run(args)) if args.image.is_none() => {
                    Some(false)
                }
                _ => None,
            };
            if let Some(yes) = default_image {
                let configured = loaded.config.default_image.as_deref();
                images::offer_default_image(&client, configured, yes, as_json).await?;
            }
            match command {
                VmCommand::Guest(command) => {
                    guest::execute(command, &client, &loaded.config, out).await
                }
                VmCommand::Observe(command) => {
                    observe::execute(command, &client, as_json, out).await
                }
                command => vm_command(command, &client, as_json, out).await,
            }
        }
        Command::Web { open } => {
            let loaded = load_config(env)?;
            let client = daemon::ensure_running(&loaded.config).await?;
            observe::web(&client, open, as_json, out).await
        }
        Command::SshConfig => {
            let loaded = load_config(env)?;
            let client = daemon::ensure_running(&loaded.config).await?;
            guest::ssh_config(&client, &loaded.config, out).await
        }
        Command::Image(command) => {
            let loaded = load_config(env)?;
            let client = daemon::ensure_running(&loaded.config).await?;
            image_command(command, &client, as_json, out).await
        }
    }
}

/// Doctor's inputs from the effective config.
pub fn doctor_inputs(config: &banger_config::Config) -> banger_doctor::DoctorInputs {
    banger_doctor::DoctorInputs {
        state_dir: config.state_dir.clone(),
        runtime_dir: config.runtime_dir.clone(),
        vmm: config.vmm.as_str().to_string(),
        firecracker_bin: config.firecracker_bin.clone(),
        qemu_bin: config.qemu_bin.clone(),
        vhost_vsock_bin: config.vhost_vsock_bin.clone(),
        subnet: (config.network.subnet.addr(), config.network.subnet.prefix()),
        bridge: config.network.bridge.clone(),
        netns: config.network.netns.clone(),
        host_forward_accept: config.network.host_forward_accept,
    }
}

async fn daemon_command(
    command: DaemonCommand,
    loaded: &LoadedConfig,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let client = Client::new(loaded.config.socket_path());
    match command {
        DaemonCommand::Start => {
            let started = daemon::ensure_running_reporting(&loaded.config).await?;
            let health: banger_api::Health = client.get("/v1/health").await?;
            if as_json {
                json(
                    out,
                    &serde_json::json!({ "started": started.is_some(), "health": health }),
                )
            } else if started.is_some() {
                Ok(())
            } else {
                print(
                    out,
                    &format!("bangerd is already running (pid {})\n", health.pid),
                )
            }
        }
        DaemonCommand::Stop => match client.get::<banger_api::Health>("/v1/health").await {
            Ok(health) => {
                client
                    .call::<serde_json::Value>(Method::POST, "/v1/daemon/stop", None::<&()>)
                    .await?;
                daemon::wait_gone(&loaded.config.socket_path(), health.pid).await;
                if as_json {
                    json(
                        out,
                        &serde_json::json!({ "stopped": true, "pid": health.pid }),
                    )
                } else {
                    print(
                        out,
                        &format!(
                            "stopped bangerd (pid {}); running VMs keep running\n",
                            health.pid
                        ),
                    )
                }
            }
            Err(err) if err.is_unreachable() => {
                if as_json {
                    json(
                        out,
                        &serde_json::json!({ "stopped": false, "running": false }),
                    )
                } else {
                    print(out, "bangerd is not running\n")
                }
            }
            Err(err) => Err(err.into()),
        },
        DaemonCommand::Status => match client.get::<banger_api::Health>("/v1/health").await {
            Ok(health) => {
                if as_json {
                    json(
                        out,
                        &serde_json::json!({ "running": true, "health": health, "socket": loaded.config.socket_path() }),
                    )
                } else {
                    print(
                        out,
                        &format!(
                            "bangerd {} is running (pid {}, since {}) on {}\n",
                            health.version,
                            health.pid,
                            health.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                            loaded.config.socket_path().display()
                        ),
                    )
                }
            }
            Err(err) if err.is_unreachable() => {
                if as_json {
                    json(
                        out,
                        &serde_json::json!({ "running": false, "socket": loaded.config.socket_path() }),
                    )?;
                } else {
                    print(
                        out,
                        &format!(
                            "bangerd is not running (no answer on {})\n",
                            loaded.config.socket_path().display()
                        ),
                    )?;
                }
                Err(Failure {
                    code: exit::DAEMON,
                    text: String::new(),
                })
            }
            Err(err) => Err(err.into()),
        },
    }
}

fn vm_path(name: &str) -> String {
    format!("/v1/vms/{}", encode_segment(name))
}

/// Percent-encodes a path segment (names are DNS labels, but prefixes are user input).
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Follows `op` to its end, printing a line per finished stage (unless `quiet`), and turns a
/// failed operation into a [`Failure`].
pub async fn follow_operation(
    client: &Client,
    op: Operation,
    quiet: bool,
) -> Result<Operation, Failure> {
    let mut printed = 0;
    let mut stderr = std::io::stderr();
    let mut show = |op: &Operation| {
        let (lines, count) = output::new_stage_lines(op, printed);
        printed = count;
        if !quiet {
            for line in lines {
                let _ = writeln!(stderr, "{line}");
            }
        }
    };
    show(&op);
    let done = if op.is_finished() {
        op
    } else {
        client.follow(op.id, &mut show).await?
    };
    match (&done.status, &done.error) {
        (OperationStatus::Succeeded, _) => Ok(done),
        (_, Some(err)) => Err(Failure::new(
            exit_code_for(err.code),
            output::api_error(err),
        )),
        _ => Err(Failure::new(
            exit::FAILED,
            "error: the operation failed without a reason",
        )),
    }
}

async fn vm_command(
    command: VmCommand,
    client: &Client,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let now = chrono::Utc::now();
    match command {
        VmCommand::Observe(_) => Err(Failure::new(
            exit::USAGE,
            "error: logs and stats are routed in `execute`",
        )),
        VmCommand::Guest(_) => Err(Failure::new(
            exit::USAGE,
            "error: guest commands need the configuration (routed in `execute`)",
        )),
        VmCommand::List => {
            let vms: Vec<Vm> = client.get("/v1/vms").await?;
            if as_json {
                json(out, &vms)
            } else {
                print(out, &output::vm_table(&vms, now))
            }
        }
        VmCommand::Show { name } => {
            let vm: Vm = client.get(&vm_path(&name)).await?;
            if as_json {
                json(out, &vm)
            } else {
                print(out, &output::vm_detail(&vm, now))
            }
        }
        VmCommand::Create(args) => {
            let req = CreateVmRequest {
                name: args.name,
                image: args.image,
                vcpus: args.vcpus,
                memory_mib: args.memory,
                disk_size_mib: args.disk_size,
                no_start: args.no_start,
                publish: args.publish,
            };
            let op: Operation = client.call(Method::POST, "/v1/vms", Some(&req)).await?;
            if !as_json {
                let _ = writeln!(
                    std::io::stderr(),
                    "Creating VM {}",
                    op.vm_name.clone().unwrap_or_default()
                );
            }
            let done = follow_operation(client, op, as_json).await?;
            let id = done.vm_id.map(|id| id.to_string()).unwrap_or_default();
            let vm: Vm = client.get(&vm_path(&id)).await?;
            if as_json {
                json(out, &serde_json::json!({ "operation": done, "vm": vm }))
            } else {
                let total: u64 = done.stages.iter().filter_map(|s| s.duration_ms).sum();
                print(
                    out,
                    &format!(
                        "{} is {} ({} ms)\n  IP   {}\n  DNS  {}\n  SSH  banger vm ssh {}\n",
                        vm.name,
                        vm.state,
                        total,
                        vm.ip.clone().unwrap_or_else(|| "-".into()),
                        vm.dns_name.clone().unwrap_or_else(|| "-".into()),
                        vm.name
                    ),
                )
            }
        }
        VmCommand::Start { names } => {
            each(names, as_json, out, |name| async move {
                let op: Operation = client
                    .call(
                        Method::POST,
                        &format!("{}/start", vm_path(&name)),
                        None::<&()>,
                    )
                    .await?;
                follow_operation(client, op, as_json).await
            })
            .await
        }
        VmCommand::Stop { names, force } => {
            each(names, as_json, out, |name| async move {
                let path = format!(
                    "{}/stop{}",
                    vm_path(&name),
                    if force { "?force=true" } else { "" }
                );
                let op: Operation = client.call(Method::POST, &path, None::<&()>).await?;
                follow_operation(client, op, as_json).await
            })
            .await
        }
        VmCommand::Restart { names } => {
            each(names, as_json, out, |name| async move {
                let op: Operation = client
                    .call(
                        Method::POST,
                        &format!("{}/restart", vm_path(&name)),
                        None::<&()>,
                    )
                    .await?;
                follow_operation(client, op, as_json).await
            })
            .await
        }
        VmCommand::Delete { names, force } => {
            // Submit every delete first so they run in parallel (one actor per VM), then follow.
            let mut submitted = Vec::new();
            let mut batch = Batch::default();
            for name in names {
                let path = format!(
                    "{}{}",
                    vm_path(&name),
                    if force { "?force=true" } else { "" }
                );
                match client
                    .call::<Operation>(Method::DELETE, &path, None::<&()>)
                    .await
                {
                    Ok(op) => submitted.push((name, op)),
                    Err(err) => batch.fail(&name, Failure::from(err)),
                }
            }
            for (name, op) in submitted {
                match follow_operation(client, op, true).await {
                    Ok(done) => {
                        if !as_json {
                            print(out, &format!("deleted {name}\n"))?;
                        }
                        batch.results.push(done);
                    }
                    Err(failure) => batch.fail(&name, failure),
                }
            }
            batch.finish(as_json, out)
        }
        VmCommand::Edit {
            name,
            vcpus,
            memory,
            disk_size,
        } => {
            let req = EditVmRequest {
                vcpus,
                memory_mib: memory,
                disk_size_mib: disk_size,
            };
            let vm: Vm = client
                .call(Method::PATCH, &vm_path(&name), Some(&req))
                .await?;
            if as_json {
                json(out, &vm)
            } else {
                print(out, &output::vm_detail(&vm, now))
            }
        }
        VmCommand::Port {
            name,
            mapping,
            remove,
        } => port_command(client, out, as_json, &name, mapping, remove).await,
    }
}

/// `vm port`: add (`HOST:GUEST`), remove (`--remove HOST[/udp]`) or list.
async fn port_command(
    client: &Client,
    out: &mut impl Write,
    as_json: bool,
    name: &str,
    mapping: Option<banger_api::PortForward>,
    remove: Option<String>,
) -> Result<(), Failure> {
    let ports = format!("{}/ports", vm_path(name));
    if let Some(forward) = mapping {
        let added: banger_api::PortForward =
            client.call(Method::POST, &ports, Some(&forward)).await?;
        return if as_json {
            json(out, &added)
        } else {
            print(
                out,
                &format!("{name}: forwarding {}\n", output::port_line(&added)),
            )
        };
    }
    if let Some(spec) = remove {
        let (port, proto) = match spec.split_once('/') {
            Some((port, proto)) => (port, proto),
            None => (spec.as_str(), "tcp"),
        };
        let removed: banger_api::PortForward = client
            .call(
                Method::DELETE,
                &format!("{ports}/{port}?proto={proto}"),
                None::<&()>,
            )
            .await?;
        return if as_json {
            json(out, &removed)
        } else {
            print(
                out,
                &format!("{name}: removed {}\n", output::port_line(&removed)),
            )
        };
    }
    let list: Vec<banger_api::PortForward> = client.get(&ports).await?;
    if as_json {
        json(out, &list)
    } else {
        print(out, &output::port_table(&list))
    }
}

/// Runs `action` for each name in turn, printing `NAME: state` lines; keeps going after a
/// failure and exits with the first failure's code.
async fn each<F, Fut>(
    names: Vec<String>,
    as_json: bool,
    out: &mut impl Write,
    action: F,
) -> Result<(), Failure>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Operation, Failure>>,
{
    let mut batch = Batch::default();
    for name in names {
        match action(name.clone()).await {
            Ok(op) => {
                if !as_json {
                    let total: u64 = op.stages.iter().filter_map(|s| s.duration_ms).sum();
                    print(
                        out,
                        &format!(
                            "{}: done ({total} ms)\n",
                            op.vm_name.clone().unwrap_or(name)
                        ),
                    )?;
                }
                batch.results.push(op);
            }
            Err(failure) => batch.fail(&name, failure),
        }
    }
    batch.finish(as_json, out)
}

/// A command over several VMs: it keeps going after a failure (reported on stderr as it
/// happens) and exits with the first failure's code.
#[derive(Debug, Default)]
struct Batch {
    results: Vec<Operation>,
    first_failure: Option<Failure>,
}

impl Batch {
    fn fail(&mut self, name: &str, failure: Failure) {
        eprint!("{name}: {}", failure.text);
        self.first_failure.get_or_insert(failure);
    }

    fn finish(self, as_json: bool, out: &mut impl Write) -> Result<(), Failure> {
        if as_json {
            json(out, &self.results)?;
        }
        match self.first_failure {
            Some(failure) => Err(Failure {
                code: failure.code,
                text: String::new(),
            }),
            None => Ok(()),
        }
    }
}

async fn image_command(
    command: ImageCommand,
    client: &Client,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let now = chrono::Utc::now();
    match command {
        ImageCommand::List => {
            let images: Vec<Image> = client.get("/v1/images").await?;
            if as_json {
                json(out, &images)
            } else {
                print(out, &output::image_table(&images, now))
            }
        }
        ImageCommand::Show { name } => {
            let image: Image = client
                .get(&format!("/v1/images/{}", encode_segment(&name)))
                .await?;
            if as_json {
                json(out, &image)
            } else {
                print(out, &output::image_detail(&image))
            }
        }
        ImageCommand::Delete { name } => {
            let image: Image = client
                .call(
                    Method::DELETE,
                    &format!("/v1/images/{}", encode_segment(&name)),
                    None::<&()>,
                )
                .await?;
            if as_json {
                json(out, &image)
            } else {
                print(out, &format!("deleted image {}\n", image.name))
            }
        }
        ImageCommand::Register(args) => images::register(args, client, as_json, out).await,
        ImageCommand::Promote { name } => images::promote(&name, client, as_json, out).await,
        ImageCommand::Bootstrap(args) => images::bootstrap(args, client, as_json, out).await,
        ImageCommand::Build(args) => images::build(args, client, as_json, out).await,
    }
}

/// Where `bangerd` is: `$BANGER_DAEMON_BIN`, else beside this executable, else on PATH.
pub fn daemon_binary(env: &Environment) -> PathBuf {
    if let Some(path) = env.var("BANGER_DAEMON_BIN") {
        return PathBuf::from(path);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let sibling = dir.join("bangerd");
            if sibling.is_file() {
                return sibling;
            }
        }
    }
    PathBuf::from("bangerd")
}
