//! The web UI's pages: server-rendered HTML that works before any script runs, plus data
//! attributes that `assets/app.js` uses to keep it live (stats, stage progress, logs).
//!
//! Pages read through the same [`Manager`](banger_core::Manager) calls as the API handlers and
//! change nothing: every action (create, stop, delete, ...) is a `fetch` of the public API from
//! the browser, so the UI can do nothing the API does not allow. Every value is HTML-escaped.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use banger_api::{Image, Vm};

use crate::api::AppState;

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nav {
    Vms,
    Create,
    Images,
    None,
}

/// The frame of every page. `data` is extra `data-*` attributes for the body (already escaped).
fn page(
    title: &str,
    page_id: &str,
    nav: Nav,
    state: &AppState,
    data: &str,
    body: &str,
) -> Html<String> {
    let link = |href: &str, label: &str, me: Nav| {
        let current = if me == nav {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    };
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · banger</title><link rel=\"stylesheet\" href=\"/assets/app.css\">\
         <script src=\"/assets/app.js\" defer></script></head>\n\
         <body data-page=\"{page_id}\" data-interval=\"{interval}\"{data}>\
         <header class=\"top\"><a class=\"brand\" href=\"/\">banger</a><nav>{vms}{create}{images}</nav>\
         <span class=\"version\">bangerd {version}</span></header>\n<main>{body}</main></body></html>\n",
        title = esc(title),
        interval = state.stats.interval_secs(),
        vms = link("/", "VMs", Nav::Vms),
        create = link("/vms/new", "New VM", Nav::Create),
        images = link("/images", "Images", Nav::Images),
        version = esc(&state.health.version),
    ))
}

fn error_page(state: &AppState, status: StatusCode, message: &str) -> Response {
    (
        status,
        page(
            "Error",
            "error",
            Nav::None,
            state,
            "",
            &format!("<h1>{}</h1><p class=\"error shown\">{}</p><p><a href=\"/\">Back to the VM list</a></p>", status.as_u16(), esc(message)),
        ),
    )
        .into_response()
}

fn opt(value: Option<&str>) -> String {
    esc(value.unwrap_or("–"))
}

fn state_badge(vm: &Vm) -> String {
    let state = vm.state.to_string();
    format!(
        "<span class=\"state state-{s}\" data-field=\"state\">{s}</span>",
        s = esc(&state)
    )
}

/// `GET /`: every VM with state, address, DNS name, image and a live CPU sparkline.
pub async fn vm_list(State(state): State<AppState>) -> Response {
    let vms = match state.manager.list_vms() {
        Ok(vms) => vms,
        Err(err) => return error_page(&state, StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    };
    let rows: String = vms
        .iter()
        .map(|vm| {
            format!(
                "<tr data-vm=\"{id}\"><td><a href=\"/vms/{name}\">{name}</a></td><td>{badge}</td>\
                 <td>{ip}</td><td>{dns}</td><td>{image}</td><td>{vcpus} / {mem} MiB</td>\
                 <td class=\"cpu\"><svg class=\"spark\" viewBox=\"0 0 120 24\" preserveAspectRatio=\"none\" aria-hidden=\"true\"><polyline class=\"a\" points=\"\"/></svg>\
                 <span data-field=\"cpu\">–</span></td></tr>",
                id = vm.id,
                name = esc(vm.name.as_str()),
                badge = state_badge(vm),
                ip = opt(vm.ip.as_deref()),
                dns = opt(vm.dns_name.as_deref()),
                image = esc(&vm.image_name),
                vcpus = vm.vcpus,
                mem = vm.memory_mib,
            )
        })
        .collect();
    let empty = if vms.is_empty() {
        "<p class=\"empty\">No VMs yet. <a href=\"/vms/new\">Create one</a>.</p>"
    } else {
        ""
    };
    page(
        "VMs",
        "vms",
        Nav::Vms,
        &state,
        "",
        &format!(
            "<div class=\"bar\"><h1>Virtual machines</h1><a class=\"button primary\" href=\"/vms/new\">New VM</a></div>\
             <table class=\"list\" id=\"vms\"><thead><tr><th>Name</th><th>State</th><th>Address</th><th>DNS name</th>\
             <th>Image</th><th>vCPUs / memory</th><th>CPU</th></tr></thead><tbody>{rows}</tbody></table>{empty}"
        ),
    )
    .into_response()
}

fn field(name: &str, label: &str, input: &str, hint: &str) -> String {
    format!(
        "<div class=\"field\"><label for=\"f-{name}\">{label}</label>{input}\
         <small>{hint}</small><p class=\"error\" data-error-for=\"{name}\" role=\"alert\"></p></div>"
    )
}

/// `GET /vms/new`: the create form; the script posts it and shows the stages live.
pub async fn create_form(State(state): State<AppState>) -> Response {
    let images: Vec<Image> = state.manager.list_images().unwrap_or_default();
    let settings = state.manager.settings();
    let default_image = settings.default_image.clone().unwrap_or_default();
    let options: String = images
        .iter()
        .map(|image| {
            let name = image.name.as_str();
            let selected = if name == default_image {
                " selected"
            } else {
                ""
            };
            format!(
                "<option value=\"{n}\"{selected}>{n}</option>",
                n = esc(name)
            )
        })
        .collect();
    let no_images = if images.is_empty() {
        "<p class=\"note\">No images yet: register or build one on the <a href=\"/images\">images page</a> first.</p>"
    } else {
        ""
    };
    let text = |name: &str, placeholder: &str| {
        format!(
            "<input id=\"f-{name}\" name=\"{name}\" autocomplete=\"off\" placeholder=\"{}\">",
            esc(placeholder)
        )
    };
    let number = |name: &str, default: String| {
        format!("<input id=\"f-{name}\" name=\"{name}\" inputmode=\"numeric\" autocomplete=\"off\" data-number placeholder=\"{default}\">")
    };
    let form = [
        field(
            "name",
            "Name",
            &text("name", "a random name"),
            "lowercase letters, digits and dashes",
        ),
        field(
            "image",
            "Image",
            &format!("<select id=\"f-image\" name=\"image\">{options}</select>"),
            "",
        ),
        field(
            "vcpus",
            "vCPUs",
            &number("vcpus", settings.default_vcpus.to_string()),
            "",
        ),
        field(
            "memory_mib",
            "Memory (MiB)",
            &number("memory_mib", settings.default_memory_mib.to_string()),
            "",
        ),
        field(
            "disk_size_mib",
            "Work disk (MiB)",
            &number("disk_size_mib", settings.default_disk_size_mib.to_string()),
            "mounted at /root",
        ),
    ]
    .concat();
    page(
        "New VM",
        "create",
        Nav::Create,
        &state,
        "",
        &format!(
            "<h1>New VM</h1>{no_images}<form id=\"create-form\" class=\"form\" novalidate>{form}\
             <p class=\"error\" data-error-for=\"\" role=\"alert\"></p>\
             <button type=\"submit\" class=\"primary\">Create</button></form>\
             <section id=\"progress\" class=\"card\" hidden><h2>Creating <span id=\"op-vm\"></span></h2>\
             <ol id=\"stages\" class=\"stages\"></ol><p id=\"op-result\"></p></section>"
        ),
    )
    .into_response()
}

/// `GET /vms/{vm}`: one VM with actions, stats charts and the live console.
pub async fn vm_page(State(state): State<AppState>, Path(reference): Path<String>) -> Response {
    let vm = match state.manager.get_vm(&reference) {
        Ok(vm) => vm,
        Err(err) => {
            let api = err.to_api();
            let status =
                StatusCode::from_u16(api.code.http_status()).unwrap_or(StatusCode::NOT_FOUND);
            return error_page(&state, status, &api.message);
        }
    };
    let timings: String = vm
        .stage_timings
        .iter()
        .map(|t| {
            format!(
                "<li>{} <span class=\"ms\">{} ms</span></li>",
                esc(&t.stage),
                t.duration_ms
            )
        })
        .collect();
    let fact = |label: &str, value: String| format!("<dt>{label}</dt><dd>{value}</dd>");
    let facts = [
        fact("Address", opt(vm.ip.as_deref())),
        fact("DNS name", opt(vm.dns_name.as_deref())),
        fact("Image", esc(&vm.image_name)),
        fact("vCPUs", vm.vcpus.to_string()),
        fact("Memory", format!("{} MiB", vm.memory_mib)),
        fact("Work disk", format!("{} MiB", vm.disk_size_mib)),
        fact(
            "VMM",
            format!(
                "{} (pid {})",
                opt(vm.vmm.as_deref()),
                vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "–".into())
            ),
        ),
        fact(
            "SSH",
            format!("<code>banger vm ssh {}</code>", esc(vm.name.as_str())),
        ),
        fact(
            "Created",
            esc(&vm.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        ),
    ]
    .concat();
    let last_error = vm
        .last_error
        .as_deref()
        .map(|e| format!("<p class=\"error shown\">Last error: {}</p>", esc(e)))
        .unwrap_or_default();
    let chart = |id: &str, label: &str| {
        format!(
            "<figure class=\"chart\"><figcaption>{label} <span class=\"now\" data-now=\"{id}\">–</span></figcaption>\
             <svg id=\"chart-{id}\" viewBox=\"0 0 300 80\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{label}\"></svg></figure>"
        )
    };
    let charts = [
        chart("cpu", "CPU"),
        chart("mem", "VMM memory (RSS)"),
        chart("net", "Network rx / tx"),
        chart("disk", "Disk read / write"),
    ]
    .concat();
    page(
        vm.name.as_str(),
        "vm",
        Nav::None,
        &state,
        &format!(" data-vm=\"{}\" data-name=\"{}\"", vm.id, esc(vm.name.as_str())),
        &format!(
            "<div class=\"bar\"><h1>{name} <span class=\"state state-{st}\" id=\"vm-state\">{st}</span></h1>\
             <div class=\"actions\"><button data-action=\"start\">Start</button><button data-action=\"stop\">Stop</button>\
             <button data-action=\"restart\">Restart</button><button data-action=\"delete\" class=\"danger\">Delete</button></div></div>\
             <p class=\"error\" id=\"action-error\" role=\"alert\"></p><p class=\"status\" id=\"action-status\"></p>{last_error}\
             <div class=\"columns\"><dl class=\"facts\">{facts}</dl><div><h2>Stage timings</h2><ol class=\"timings\">{timings}</ol></div></div>\
             <h2>Stats <small id=\"stats-note\">every {interval} s</small></h2><section class=\"charts\">{charts}</section>\
             <section class=\"logs\"><div class=\"bar\"><h2>Logs</h2><div class=\"tabs\" role=\"tablist\">\
             <button data-log=\"console\" aria-selected=\"true\">Console</button><button data-log=\"vmm\" aria-selected=\"false\">VMM</button></div></div>\
             <pre id=\"log\" class=\"log\" aria-live=\"off\"></pre></section>",
            name = esc(vm.name.as_str()),
            st = esc(&vm.state.to_string()),
            interval = state.stats.interval_secs(),
        ),
    )
    .into_response()
}

/// `GET /images`: images with delete, and the register/bootstrap/build forms the API offers.
pub async fn images_page(State(state): State<AppState>) -> Response {
    let images = match state.manager.list_images() {
        Ok(images) => images,
        Err(err) => return error_page(&state, StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    };
    let rows: String = images
        .iter()
        .map(|image| {
            format!(
                "<tr data-image=\"{id}\"><td>{name}</td><td>{size}</td><td>{managed}</td><td>{ports}</td><td>{created}</td>\
                 <td><button class=\"danger small\" data-delete-image=\"{id}\" data-name=\"{name}\">Delete</button></td></tr>",
                id = image.id,
                name = esc(image.name.as_str()),
                size = human_bytes(image.size_bytes),
                managed = if image.managed { "yes" } else { "no" },
                ports = esc(&image.readiness_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")),
                created = esc(&image.created_at.format("%Y-%m-%d %H:%M").to_string()),
            )
        })
        .collect();
    let empty = if images.is_empty() {
        "<p class=\"empty\">No images yet.</p>"
    } else {
        ""
    };
    let form = |kind: &str, title: &str| {
        format!("<div class=\"card\" data-image-form=\"{kind}\"><h2>{title}</h2><div class=\"slot\"><p class=\"note\">Checking the API…</p></div></div>")
    };
    page(
        "Images",
        "images",
        Nav::Images,
        &state,
        "",
        &format!(
            "<h1>Images</h1><table class=\"list\" id=\"images\"><thead><tr><th>Name</th><th>Size</th><th>Managed</th>\
             <th>Readiness ports</th><th>Created</th><th></th></tr></thead><tbody>{rows}</tbody></table>{empty}\
             <p class=\"error\" id=\"image-error\" role=\"alert\"></p><section class=\"cards\">{}{}{}</section>",
            form("register", "Register"),
            form("bootstrap", "Bootstrap a Debian image"),
            form("build", "Build from an image"),
        ),
    )
    .into_response()
}

/// `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            esc("<script>\"x\" & 'y'"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536 * 1024 * 1024), "1.5 GiB");
    }
}
