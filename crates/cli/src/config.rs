//! The service's settings in layers: each flag's default, then a TOML file (`--config` /
//! `OUTDIAL_CONFIG`), then its `OUTDIAL_*` variable, then the flag itself. One set of keys: a
//! file key is the flag's long name with `_` for `-` (`--amd-greeting-ms` is
//! `amd_greeting_ms`), so clap stays the one typed description of every setting.
//!
//! The file's values become the flags' defaults before parsing, so clap's own precedence
//! (flag over variable over default) gives the layering, and each value is checked by the
//! flag's own parser first: a bad one stops the start naming the file, the key and what the
//! flag accepts.

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The subcommand whose flags a file may set, beside the global ones.
const SERVE: &str = "serve";
const CONFIG_FLAG: &str = "config";
pub const CONFIG_ENV: &str = "OUTDIAL_CONFIG";
const MASK: &str = "********";

/// The file a run names: `--config <path>` (or `--config=<path>`) on the command line, else
/// `OUTDIAL_CONFIG`.
pub fn file_from(args: &[OsString], env: Option<OsString>) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    env.filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `cmd` with the file's values as the defaults of the flags they name.
pub fn apply_file(mut cmd: Command, path: &Path) -> Result<Command> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow!("config file {}: {e}", path.display()))?;
    for (key, item) in doc.iter() {
        let values = values(item).ok_or_else(|| {
            anyhow!(
                "config file {}: `{key}`: expected a string, number, boolean or a list of them",
                path.display()
            )
        })?;
        let id = key.replace('-', "_");
        let in_root = setting(&cmd, &id).is_some();
        let serve = cmd
            .find_subcommand(SERVE)
            .context("the serve command is missing")?;
        let arg = match setting(&cmd, &id).or_else(|| setting(serve, &id)) {
            Some(arg) if id != CONFIG_FLAG => arg.clone(),
            _ => bail!(
                "config file {}: unknown key `{key}` (docs/configuration.md lists the keys)",
                path.display()
            ),
        };
        for value in &values {
            check(&arg, value)
                .map_err(|why| anyhow!("config file {}: `{key}`: {why}", path.display()))?;
        }
        // Startup only: the defaults live as long as the command, which is the process.
        let defaults: Vec<&'static str> = values
            .into_iter()
            .map(|v| &*Box::leak(v.into_boxed_str()))
            .collect();
        let set = move |a: Arg| a.default_values(defaults);
        cmd = if in_root {
            cmd.mut_arg(id.as_str(), set)
        } else {
            cmd.mut_subcommand(SERVE, |s| s.mut_arg(id.as_str(), set))
        };
    }
    Ok(cmd)
}

/// Runs `value` through the flag's own parser (type, range, possible values), as if given as
/// `--flag=value`: the file is held to exactly what the command line accepts.
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or_default();
    Command::new("outdial")
        .no_binary_name(true)
        .arg(arg.clone().global(false).required(false))
        .try_get_matches_from([format!("--{long}={value}")])
        .map(drop)
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_string()
        })
}

/// A setting the file may name: a flag with a long name (not help or version).
fn setting<'a>(cmd: &'a Command, id: &str) -> Option<&'a Arg> {
    cmd.get_arguments()
        .find(|a| a.get_id() == id && a.get_long().is_some() && a.get_long() != Some("help"))
}

fn values(item: &toml_edit::Item) -> Option<Vec<String>> {
    let one = |v: &toml_edit::Value| match v {
        toml_edit::Value::String(s) => Some(s.value().clone()),
        toml_edit::Value::Integer(i) => Some(i.value().to_string()),
        toml_edit::Value::Float(f) => Some(f.value().to_string()),
        toml_edit::Value::Boolean(b) => Some(b.value().to_string()),
        _ => None,
    };
    match item.as_value()? {
        toml_edit::Value::Array(items) => items.iter().map(one).collect(),
        v => one(v).map(|v| vec![v]),
    }
}

/// The settings of a `serve` with these layers, one line each: `key = value  # source`, the
/// values of secrets masked.
pub fn show(cmd: &Command, file: Option<&Path>, file_keys: &[String]) -> Result<String> {
    let matches = cmd
        .clone()
        .try_get_matches_from(["outdial", SERVE])
        .map_err(|e| anyhow!("{e}"))?;
    let serve = matches
        .subcommand_matches(SERVE)
        .context("the serve command is missing")?;
    let serve_cmd = cmd
        .find_subcommand(SERVE)
        .context("the serve command is missing")?;
    let mut out = String::new();
    if let Some(file) = file {
        out.push_str(&format!("# config file: {}\n", file.display()));
    }
    for arg in settings(cmd, serve_cmd) {
        let id = arg.get_id().as_str();
        let m = if serve.try_get_raw(id).is_ok() {
            serve
        } else {
            &matches
        };
        let raw: Vec<String> = m
            .try_get_raw(id)
            .ok()
            .flatten()
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match m.value_source(id) {
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::DefaultValue) if file_keys.iter().any(|k| k == id) => "file",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let value = if raw.is_empty() {
            "(unset)".to_string()
        } else if arg.is_hide_env_values_set() {
            MASK.to_string()
        } else {
            raw.join(",")
        };
        out.push_str(&format!("{id} = {value:?}  # {source}\n"));
    }
    Ok(out)
}

/// Every setting: the global flags, then serve's, in declaration order.
fn settings<'a>(root: &'a Command, serve: &'a Command) -> Vec<&'a Arg> {
    let global: Vec<&Arg> = root
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != CONFIG_FLAG)
        .filter(|a| !matches!(a.get_long(), Some("help" | "version")))
        .collect();
    let own = serve.get_arguments().filter(|a| {
        a.get_long().is_some()
            && !a.is_global_set()
            && !matches!(a.get_long(), Some("help" | "version"))
            && !global.iter().any(|g| g.get_id() == a.get_id())
    });
    // By key: changing a flag's default (the file's layer) moves it within clap's list.
    let mut all: Vec<&Arg> = global.iter().copied().chain(own).collect();
    all.sort_by_key(|a| a.get_id().as_str().to_owned());
    all
}

/// docs/configuration.md's table, from the flags themselves.
pub fn reference(cmd: &Command) -> Result<String> {
    let serve = cmd
        .find_subcommand(SERVE)
        .context("the serve command is missing")?;
    let mut out = String::from(
        "| key (TOML) | flag | variable | default | what it sets |\n|---|---|---|---|---|\n",
    );
    for arg in settings(cmd, serve) {
        let id = arg.get_id().as_str();
        let long = arg.get_long().unwrap_or_default();
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.iter().all(String::is_empty) {
            String::new()
        } else {
            format!("`{}`", default.join(","))
        };
        let help = arg
            .get_help()
            .map(|h| h.to_string().replace('|', "\\|").replace('\n', " "))
            .unwrap_or_default();
        out.push_str(&format!(
            "| `{id}` | `--{long}` | {env} | {default} | {help} |\n"
        ));
    }
    Ok(out)
}

/// Which keys the file sets, for [`show`]'s sources.
pub fn file_keys(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow!("config file {}: {e}", path.display()))?;
    Ok(doc.iter().map(|(k, _)| k.replace('-', "_")).collect())
}

/// The command line parsed with the file's layer, and the file.
pub fn parse<T: clap::FromArgMatches>(
    cmd: Command,
    args: Vec<OsString>,
    env: Option<OsString>,
) -> Result<(T, Command, Option<PathBuf>), clap::Error> {
    let file = file_from(&args, env);
    let cmd = match &file {
        Some(path) => match apply_file(cmd.clone(), path) {
            Ok(cmd) => cmd,
            Err(e) => return Err(cmd.clone().error(clap::error::ErrorKind::InvalidValue, e)),
        },
        None => cmd,
    };
    let matches: ArgMatches = cmd.clone().try_get_matches_from(args)?;
    Ok((T::from_arg_matches(&matches)?, cmd, file))
}
