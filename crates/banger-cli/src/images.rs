//! `banger image register|promote|bootstrap|build`, and the default image offer of
//! `vm create` on a host with no image at all.
//!
//! Register and promote print the image; bootstrap and build follow their operation with a
//! line per finished stage (build also shows the script's output as it runs).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use banger_api::{
    BootstrapImageRequest, BuildImageRequest, Image, Operation, RegisterImageRequest, StageStatus,
};
use clap::Args;
use hyper::Method;

use crate::client::Client;
use crate::{encode_segment, exit, json, output, print, Failure};

/// The image `image bootstrap` makes and `vm create` uses when nothing else is configured.
pub const DEFAULT_IMAGE: &str = "debian-12";

/// `banger image register` options.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Image name (a DNS label).
    #[arg(long)]
    pub name: String,
    /// Kernel: ELF vmlinux or bzImage.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Base root filesystem (ext4).
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel modules (directory or archive).
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Seed of each VM's /root disk (ext4); an empty one is made when a VM first needs it.
    #[arg(long)]
    pub work_seed: Option<PathBuf>,
    /// Kernel command line (default `root=/dev/vda ro console=ttyS0 panic=-1`).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Guest TCP port that must answer before a VM is ready (repeatable).
    #[arg(long = "ready-port", value_name = "PORT")]
    pub ready_ports: Vec<u16>,
    /// `overlay` (default: the image boots banger's early init) or `clone` (a per-VM copy of
    /// the base, for images that cannot).
    #[arg(long, value_parser = parse_root_mode)]
    pub root_mode: Option<banger_api::RootMode>,
}

/// `banger image bootstrap` options.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Debian release.
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// Image name (default `debian-12` for bookworm).
    #[arg(long)]
    pub name: Option<String>,
    /// Extra Debian package (repeatable).
    #[arg(long = "package", value_name = "PACKAGE")]
    pub packages: Vec<String>,
    /// Optional service: `opencode` (the opencode server on port 4096).
    #[arg(long = "with", value_name = "SERVICE")]
    pub with: Vec<String>,
    /// Base rootfs size, e.g. 4G (default 2G).
    #[arg(long, value_parser = crate::parse_size)]
    pub rootfs_size: Option<u64>,
}

/// `banger image build` options.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Base image (name, id or unique prefix).
    #[arg(long)]
    pub from: String,
    /// Name of the new image.
    #[arg(long)]
    pub name: String,
    /// Shell script run as root in the builder VM (`sh -e`); `-` reads stdin.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Debian package to install (repeatable; downloaded on the host).
    #[arg(long = "package", value_name = "PACKAGE")]
    pub packages: Vec<String>,
    /// New rootfs size, e.g. 4G (default: the data plus room to spare).
    #[arg(long, value_parser = crate::parse_size)]
    pub rootfs_size: Option<u64>,
}

fn absolute(path: PathBuf) -> Result<String, Failure> {
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map_err(|e| Failure::new(exit::FAILED, format!("error: current directory: {e}")))?
            .join(path)
    };
    Ok(path.display().to_string())
}

fn show(out: &mut impl Write, image: &Image, as_json: bool) -> Result<(), Failure> {
    if as_json {
        json(out, image)
    } else {
        print(out, &output::image_detail(image))
    }
}

/// `image register`.
pub async fn register(
    args: RegisterArgs,
    client: &Client,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let req = RegisterImageRequest {
        name: args.name,
        kernel: absolute(args.kernel)?,
        rootfs: absolute(args.rootfs)?,
        initrd: args.initrd.map(absolute).transpose()?,
        modules: args.modules.map(absolute).transpose()?,
        work_seed: args.work_seed.map(absolute).transpose()?,
        cmdline: args.cmdline,
        readiness_ports: args.ready_ports,
        root_mode: args.root_mode,
    };
    let image: Image = client.call(Method::POST, "/v1/images", Some(&req)).await?;
    show(out, &image, as_json)
}

/// `image promote`.
pub async fn promote(
    name: &str,
    client: &Client,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let image: Image = client
        .call(
            Method::POST,
            &format!("/v1/images/{}/promote", encode_segment(name)),
            None::<&()>,
        )
        .await?;
    show(out, &image, as_json)
}

/// Follows an image operation, showing finished stages and the running stage's latest line.
async fn follow(client: &Client, op: Operation, as_json: bool) -> Result<Operation, Failure> {
    if as_json {
        return crate::follow_operation(client, op, true).await;
    }
    let mut last_detail: Option<String> = None;
    let mut stderr = std::io::stderr();
    let mut printed = 0;
    let mut show = |op: &Operation| {
        let (lines, count) = output::new_stage_lines(op, printed);
        printed = count;
        for line in lines {
            let _ = writeln!(stderr, "{line}");
        }
        if let Some(stage) = op
            .stages
            .last()
            .filter(|s| s.status == StageStatus::Running)
        {
            if stage.detail != last_detail {
                if let Some(detail) = &stage.detail {
                    let _ = writeln!(stderr, "  | {detail}");
                }
                last_detail = stage.detail.clone();
            }
        }
    };
    show(&op);
    let done = if op.is_finished() {
        op
    } else {
        client.follow(op.id, &mut show).await?
    };
    crate::follow_operation(client, done, true).await
}

async fn print_result(
    client: &Client,
    done: &Operation,
    name: &str,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let image: Image = client
        .get(&format!("/v1/images/{}", encode_segment(name)))
        .await?;
    if as_json {
        return json(
            out,
            &serde_json::json!({ "operation": done, "image": image }),
        );
    }
    let total: u64 = done.stages.iter().filter_map(|s| s.duration_ms).sum();
    print(
        out,
        &format!(
            "image {} is ready ({:.1} s)\n  create a VM: banger vm create --image {}\n",
            image.name,
            total as f64 / 1000.0,
            image.name
        ),
    )
}

/// `image bootstrap`.
pub async fn bootstrap(
    args: BootstrapArgs,
    client: &Client,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let name = args.name.clone().unwrap_or_else(|| {
        if args.suite == "bookworm" {
            DEFAULT_IMAGE.to_string()
        } else {
            format!("debian-{}", args.suite)
        }
    });
    let req = BootstrapImageRequest {
        suite: Some(args.suite),
        name: Some(name.clone()),
        packages: args.packages,
        with: args.with,
        rootfs_size_mib: args.rootfs_size,
    };
    let op: Operation = client
        .call(Method::POST, "/v1/images/bootstrap", Some(&req))
        .await?;
    if !as_json {
        let _ = writeln!(
            std::io::stderr(),
            "Bootstrapping image {name} from Debian's packages (the first run downloads about 370 MB)"
        );
    }
    let done = follow(client, op, as_json).await?;
    print_result(client, &done, &name, as_json, out).await
}

/// `image build`.
pub async fn build(
    args: BuildArgs,
    client: &Client,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let script = match &args.script {
        None => None,
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Failure::new(exit::USAGE, format!("error: reading stdin: {e}")))?;
            Some(text)
        }
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            Failure::new(
                exit::USAGE,
                format!("error: reading the script {}: {e}", path.display()),
            )
        })?),
    };
    let req = BuildImageRequest {
        from: args.from,
        name: args.name.clone(),
        script,
        packages: args.packages,
        rootfs_size_mib: args.rootfs_size,
    };
    let op: Operation = client
        .call(Method::POST, "/v1/images/build", Some(&req))
        .await?;
    if !as_json {
        let _ = writeln!(std::io::stderr(), "Building image {}", args.name);
    }
    let done = follow(client, op, as_json).await?;
    print_result(client, &done, &args.name, as_json, out).await
}

/// Before `vm create` without `--image`: when the host has no image at all, offers to
/// bootstrap the default one (asks on a terminal; `--yes` skips the question); without a
/// terminal or an answer, fails with the exact command to run.
pub async fn offer_default_image(
    client: &Client,
    configured: Option<&str>,
    yes: bool,
    as_json: bool,
) -> Result<(), Failure> {
    let images: Vec<Image> = client.get("/v1/images").await?;
    if !images.is_empty() {
        return Ok(());
    }
    let name = configured.unwrap_or(DEFAULT_IMAGE).to_string();
    let command = if name == DEFAULT_IMAGE {
        "banger image bootstrap".to_string()
    } else {
        format!("banger image bootstrap --name {name}")
    };
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let go = yes
        || (interactive && {
            let mut stderr = std::io::stderr();
            let _ = write!(
                stderr,
                "There is no image yet. Bootstrap the default Debian image `{name}` now?\n\
                 It is built from Debian's packages: a few minutes the first time (longer when \
                 VMs run under QEMU/TCG). [Y/n] "
            );
            let _ = stderr.flush();
            let mut answer = String::new();
            let _ = std::io::stdin().lock().read_line(&mut answer);
            matches!(answer.trim(), "" | "y" | "Y" | "yes")
        });
    if !go {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!(
                "error: there is no image yet; make the default one with:\n  {command}\n\
                 (or pass --yes to create it now)"
            ),
        ));
    }
    let args = BootstrapArgs {
        suite: "bookworm".into(),
        name: Some(name),
        packages: Vec::new(),
        with: Vec::new(),
        rootfs_size: None,
    };
    let mut sink = std::io::sink();
    if as_json {
        bootstrap(args, client, true, &mut sink).await
    } else {
        bootstrap(args, client, false, &mut std::io::stderr()).await
    }
}

fn parse_root_mode(value: &str) -> Result<banger_api::RootMode, String> {
    match value {
        "overlay" => Ok(banger_api::RootMode::Overlay),
        "clone" => Ok(banger_api::RootMode::Clone),
        other => Err(format!(
            "`{other}` is not a root mode: use overlay or clone"
        )),
    }
}
