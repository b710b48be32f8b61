//! The `portcullis` command's library: `portcullis.yaml` ([`spec`]), the
//! render of Envoy's, the stages' and the edge's configurations from it
//! ([`render`]), and the provider check ([`check`]).
#![forbid(unsafe_code)]

pub mod check;
pub mod origins;
pub mod render;
pub mod spec;

use std::path::Path;

/// Reads, parses and renders a `portcullis.yaml` file.
pub fn render_file(path: &Path) -> anyhow::Result<render::Rendered> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let spec = spec::parse(&text)?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(render::render(&spec, base)?)
}

/// Writes a render into `dir`: `envoy.yaml`, the stages' documents under
/// `filters/`, and `edge.json` when an app goes through connectors. Returns
/// the files written.
pub fn write_render(r: &render::Rendered, dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let filters = dir.join("filters");
    std::fs::create_dir_all(&filters)?;
    let mut written = Vec::new();
    let mut write = |path: std::path::PathBuf, text: String| -> anyhow::Result<()> {
        std::fs::write(&path, text)?;
        written.push(path);
        Ok(())
    };
    let header =
        "# Rendered by `portcullis render` from portcullis.yaml: edit that file, not this one.\n";
    write(
        dir.join("envoy.yaml"),
        format!("{header}{}", serde_yaml::to_string(&r.envoy)?),
    )?;
    let doc = |v: &serde_json::Value| format!("{}\n", render::document_text(v));
    match r.layout {
        spec::Layout::Split => {
            write(filters.join("robots.json"), doc(&r.robots))?;
            write(filters.join("preauth.json"), doc(&r.preauth))?;
            write(
                filters.join("conditional-access.json"),
                doc(&r.conditional_access),
            )?;
            write(filters.join("cookie.json"), doc(&r.cookie))?;
        }
        spec::Layout::AllInOne => {
            write(
                filters.join("portcullis.json"),
                doc(&render::all_in_one_document(r)),
            )?;
        }
    }
    if let Some(edge) = &r.edge {
        write(dir.join("edge.json"), doc(edge))?;
    }
    Ok(written)
}
