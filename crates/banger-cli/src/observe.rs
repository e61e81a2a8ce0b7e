//! `banger vm logs`, `banger vm stats` and `banger web`: reading what the daemon observes.
//!
//! - `vm logs NAME [-f] [--vmm] [--tail N]`: the guest's serial console by default (what a
//!   user wants to see when a guest misbehaves); `--vmm` shows the VMM's own log instead.
//!   `-f` keeps printing what is appended until Ctrl-C or the VM is deleted.
//! - `vm stats [NAME] [--watch]`: the latest sample of every running VM (or one), redrawn every
//!   stats interval with `--watch`.
//! - `web [--open]`: the web UI's login link from the daemon (Unix socket only).

use std::io::Write;

use banger_api::{VmStats, WebAccess};
use clap::Subcommand;

use crate::client::Client;
use crate::{encode_segment, exit, json, output, print, Failure};

/// The observing subcommands of `banger vm`.
#[derive(Debug, Subcommand)]
pub enum ObserveCommand {
    /// Print a VM's serial console log (`--vmm`: the VMM's log).
    Logs {
        /// Name, id or unique prefix.
        name: String,
        /// Keep printing what is appended (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        /// The serial console log (the default).
        #[arg(long, conflicts_with = "vmm")]
        console: bool,
        /// The VMM's own log instead of the console.
        #[arg(long)]
        vmm: bool,
        /// How many of the last lines to print first.
        #[arg(long, default_value_t = 200)]
        tail: usize,
    },
    /// CPU, memory, network and disk use of running VMs.
    Stats {
        /// One VM (name, id or unique prefix); every running VM when absent.
        name: Option<String>,
        /// Redraw at every stats interval (Ctrl-C to stop).
        #[arg(short, long)]
        watch: bool,
    },
}

fn write_failure(e: std::io::Error) -> Failure {
    Failure {
        code: exit::FAILED,
        text: format!("error: writing output: {e}\n"),
    }
}

/// Runs one observing command.
pub async fn execute(
    command: ObserveCommand,
    client: &Client,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match command {
        ObserveCommand::Logs {
            name,
            follow,
            console: _,
            vmm,
            tail,
        } => {
            let path = format!(
                "/v1/vms/{}/logs?kind={}&tail={tail}&follow={follow}",
                encode_segment(&name),
                if vmm { "vmm" } else { "console" }
            );
            let mut failed = None;
            client
                .stream(&path, |chunk| {
                    if failed.is_none() {
                        if let Err(e) = out.write_all(chunk).and_then(|()| out.flush()) {
                            failed = Some(e);
                        }
                    }
                })
                .await?;
            match failed {
                // A closed pipe (`| head`) is a normal way to stop reading.
                Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(write_failure(e)),
                _ => Ok(()),
            }
        }
        ObserveCommand::Stats { name, watch } => loop {
            let (stats, interval) = match &name {
                Some(name) => {
                    let one: VmStats = client
                        .get(&format!("/v1/vms/{}/stats?last=0", encode_segment(name)))
                        .await?;
                    let interval = one.interval_secs;
                    (vec![one], interval)
                }
                None => {
                    let all: Vec<VmStats> = client.get("/v1/stats").await?;
                    let interval = all.first().map(|s| s.interval_secs).unwrap_or(5);
                    (all, interval)
                }
            };
            if as_json {
                if watch {
                    // One JSON document per line, so a pipe can read it as it comes.
                    let line = serde_json::to_string(&stats).map_err(|e| Failure {
                        code: exit::FAILED,
                        text: format!("error: {e}\n"),
                    })?;
                    print(out, &format!("{line}\n"))?;
                } else {
                    json(out, &stats)?;
                }
            } else {
                if watch {
                    // Home the cursor and clear the screen, like `watch`.
                    print(out, "\x1b[H\x1b[2J")?;
                }
                print(out, &output::stats_table(&stats))?;
            }
            if !watch {
                return Ok(());
            }
            out.flush().map_err(write_failure)?;
            tokio::time::sleep(std::time::Duration::from_secs(interval.max(1))).await;
        },
    }
}

/// `banger web [--open]`.
pub async fn web(
    client: &Client,
    open: bool,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let access: WebAccess = client.get("/v1/web").await?;
    if as_json {
        return json(out, &access);
    }
    print(
        out,
        &format!(
            "{}\n(the link logs you in; it is valid until bangerd restarts)\n",
            access.login_url
        ),
    )?;
    if open {
        match std::process::Command::new("xdg-open")
            .arg(&access.login_url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            // xdg-open hands the URL to the browser and exits.
            Ok(mut child) => {
                let _ = child.wait();
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "could not run xdg-open ({e}); open the link above yourself"
                );
            }
        }
    }
    Ok(())
}
