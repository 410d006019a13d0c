//! What every subcommand shares: sizes and budgets parsed from the command
//! line, sizes and speeds shown, models opened, progress bars drawn.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use layerpager::{shown, Error, Pager, PagerOptions, TensorIndex};

/// Parses a size: bytes (`123`), binary units (`512K`, `512M`, `4G`, `1.5T`,
/// also written `512MiB`, `4GiB`), decimal units (`512MB`, `4GB`: powers of
/// 1000, as disks are sold), or a share of `whole` (`40%`).
pub(crate) fn parse_size(text: &str, whole: u64, flag: &str) -> Result<u64, Error> {
    let bad = || {
        Error::InvalidArgument(format!(
            "{flag} '{}': expected bytes, 512M or 512MiB (binary), 4GB (decimal) or 40%",
            shown(text)
        ))
    };
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(0.0..=1000.0).contains(&p) {
            return Err(bad());
        }
        return Ok((whole as f64 * p / 100.0) as u64);
    }
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let power = |k: u32, decimal: bool| {
        if decimal {
            1000f64.powi(k as i32)
        } else {
            (1u64 << (10 * k)) as f64
        }
    };
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        u => {
            let k = match u.as_bytes()[0] {
                b'K' => 1,
                b'M' => 2,
                b'G' => 3,
                b'T' => 4,
                _ => return Err(bad()),
            };
            match &u[1..] {
                "" | "I" | "IB" => power(k, false),
                "B" => power(k, true),
                _ => return Err(bad()),
            }
        }
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(bad());
    }
    Ok((n * mult) as u64)
}

/// Parses a budget for a model of `model` bytes whose largest tensor takes
/// `largest` bytes: a budget of 0 (which the library reads as "unlimited")
/// or one that cannot hold the largest tensor is refused, naming both.
pub(crate) fn parse_budget(text: &str, model: u64, largest: u64, flag: &str) -> Result<u64, Error> {
    // "auto": what the memory limit (cgroup, else MemAvailable) leaves.
    let budget = if text.trim() == "auto" {
        layerpager::memlimit::auto_budget()?
    } else {
        parse_size(text, model, flag)?
    };
    check_budget(budget, largest, flag, text)?;
    Ok(budget)
}

/// Refuses a budget of 0 or one below the largest tensor.
pub(crate) fn check_budget(budget: u64, largest: u64, flag: &str, text: &str) -> Result<(), Error> {
    if budget == 0 {
        return Err(Error::InvalidArgument(format!(
            "{flag} '{}' is 0 bytes: give 100% to run with the whole model in RAM",
            shown(text)
        )));
    }
    if budget < largest {
        return Err(Error::InvalidArgument(format!(
            "{flag} '{}' ({}) cannot hold the largest tensor ({}): no pager can run it",
            shown(text),
            human(budget),
            human(largest)
        )));
    }
    Ok(())
}

pub(crate) fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

pub(crate) fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

pub(crate) fn open_index(path: &Path) -> Result<TensorIndex, Error> {
    Ok(open_pager(path, PagerOptions::default())?.index().clone())
}

pub(crate) fn open_pager(path: &Path, options: PagerOptions) -> Result<Pager, Error> {
    if looks_like_safetensors(path) {
        Pager::open_safetensors(path, options)
    } else {
        Pager::open_gguf(path, options)
    }
}

/// Whether a file is safetensors, by its first bytes (a GGUF starts with
/// "GGUF", a safetensors file with an 8-byte length and '{'); the
/// extension decides only when the bytes cannot be read.
fn looks_like_safetensors(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 9];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    match read {
        Ok(()) if &head[..4] == b"GGUF" => false,
        Ok(()) if head[8] == b'{' => true,
        _ => path.extension().is_some_and(|e| e == "safetensors"),
    }
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:<42} [{bar:30}] {percent:>3}% {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Budgets from "10%..100%" (step 10%), "5%..50%/5%" or a list "25%,4G".
pub(crate) fn parse_budgets(text: &str, model: u64) -> Result<Vec<u64>, Error> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--budgets '{text}': expected 10%..100%, 10%..90%/20% or 25%,50%,4G"
        ))
    };
    if let Some((from, rest)) = text.split_once("..") {
        let (to, step) = rest.split_once('/').unwrap_or((rest, "10%"));
        let (from, to, step) = (
            parse_size(from, model, "--budgets")?,
            parse_size(to, model, "--budgets")?,
            parse_size(step, model, "--budgets")?,
        );
        if step == 0 || from > to || (to - from) / step > 1000 {
            return Err(bad());
        }
        let count = (to - from) / step;
        // The last budget is exactly `to` (whole-percent steps round down).
        let mut out: Vec<u64> = (0..=count).map(|i| from + i * step).collect();
        if to - out[out.len() - 1] < step / 2 {
            *out.last_mut().expect("at least one") = to;
        } else {
            out.push(to);
        }
        return Ok(out);
    }
    text.split(',')
        .map(|b| parse_size(b, model, "--budgets"))
        .collect()
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
