//! `hourglass export` and `hourglass import`: the bulk commands for scripts. Progress goes to stderr, and only
//! when stderr is a terminal; results go to the output file or stdout.

use std::error::Error;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::bulk::export::{self, Encoding, Export, Format, Sink};
use crate::bulk::import::{self, Report};
use crate::config::{ExportArgs, ImportArgs, StoreArgs};
use crate::filter::Filter;
use crate::server;
use crate::store::{SeriesName, Store, StoreError};
use crate::time::Millis;

type CliResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// A bar on stderr when it is a terminal; nothing otherwise.
fn progress(len: u64, template: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Opens a data folder for a command, with a hint when a server holds it.
async fn open(args: &StoreArgs, hint: &str) -> CliResult<Store> {
    match server::open_store(args.store_config()).await {
        Ok(store) => Ok(store),
        Err(e @ StoreError::DataInUse(_)) => Err(format!("{e}: {hint}").into()),
        Err(e) => Err(e.into()),
    }
}

pub async fn export(args: ExportArgs) -> CliResult<()> {
    match export_to_output(args).await {
        // A reader that stopped early (`| head`) is not a failure.
        Err(e) if broken_pipe(&*e) => Ok(()),
        other => other,
    }
}

fn broken_pipe(e: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

async fn export_to_output(args: ExportArgs) -> CliResult<()> {
    let name = SeriesName::parse(&args.series)?;
    let (from, to) = export::parse_range(&args.from, &args.to)?;
    let format = Format::parse(&args.format)?;
    let fields = export::csv_fields(format, args.fields.as_deref())?;
    let filter = filter_of(&args)?;
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(File::create(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => Box::new(io::stdout()),
    };
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    match &args.url {
        Some(url) => match args.parallel {
            Some(n) if n > 1 => export_in_parallel(url, &args, n.into(), &mut out).await?,
            _ => export_from_server(url, &args, &mut out).await?,
        },
        None => {
            let store_args = StoreArgs::for_data(args.data.clone())?;
            let job = Export {
                name,
                from,
                to,
                format,
                fields,
                encoding: if args.gzip {
                    Encoding::Gzip
                } else {
                    Encoding::Identity
                },
                deflater: store_args.gzip_level,
                filter: filter.map(Arc::new),
            };
            export_from_folder(&store_args, job, &mut out).await?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Writes pieces to the output and moves the bar along the range's time.
struct ToWriter<'a> {
    out: &'a mut dyn Write,
    bar: ProgressBar,
    from: Millis,
    written: u64,
}

impl Sink for ToWriter<'_> {
    fn write(&mut self, piece: Bytes) -> io::Result<()> {
        self.out.write_all(&piece)?;
        self.written += piece.len() as u64;
        Ok(())
    }

    fn reached(&mut self, t: Millis) {
        self.bar.set_position((t - self.from) as u64);
        self.bar.set_message(HumanBytes(self.written).to_string());
    }
}

async fn export_from_folder(
    store_args: &StoreArgs,
    job: Export,
    out: &mut (dyn Write + Send),
) -> CliResult<()> {
    let store = open(
        store_args,
        "stop the server, or export through it with --url http://HOST:PORT",
    )
    .await?;
    let bar = progress(
        (job.to - job.from) as u64,
        "{spinner} {elapsed_precise} [{wide_bar}] {percent}% {msg}",
    );
    let result = tokio::task::block_in_place(|| {
        let mut sink = ToWriter {
            out,
            bar: bar.clone(),
            from: job.from,
            written: 0,
        };
        job.run(&store, &mut sink)
    });
    bar.finish_and_clear();
    store.shutdown();
    Ok(result?)
}

/// `GET {url}/api/series/{series}/export?...`, its body written as it comes.
async fn export_from_server(url: &str, args: &ExportArgs, out: &mut dyn Write) -> CliResult<()> {
    let server = Upstream::parse(url)?;
    let mut res = server
        .get(&server.path(&export_path(args, "export")), args)
        .await?;
    let bar = progress(0, "{spinner} {elapsed_precise} {bytes} {bytes_per_sec}");
    let body = res.body_mut();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the export broke off: {e}"))?;
        if let Some(data) = frame.data_ref() {
            out.write_all(data)?;
            bar.inc(data.len() as u64);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// `--parallel N`: the range's manifest, then its hours fetched `n` at a time and written in order, so the
/// output is the serial export's, byte for byte. At most `n` hours are held in memory.
async fn export_in_parallel(
    url: &str,
    args: &ExportArgs,
    n: usize,
    out: &mut dyn Write,
) -> CliResult<()> {
    if Format::parse(&args.format)? != Format::Ndjson {
        return Err(format!(
            "--parallel writes ndjson only: hours are joined as they come, and {} exports do not join",
            args.format
        )
        .into());
    }
    let server = std::sync::Arc::new(Upstream::parse(url)?);
    let manifest = server
        .get(&server.path(&export_path(args, "export/manifest")), args)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| format!("the server's manifest is not JSON: {e}"))?;
    let urls: Vec<String> = manifest["hours"]
        .as_array()
        .ok_or("the server's manifest has no hours")?
        .iter()
        .filter_map(|h| h["url"].as_str().map(str::to_string))
        .collect();
    let bar = progress(
        urls.len() as u64,
        "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} hours",
    );
    let mut running = std::collections::VecDeque::new();
    let mut next = urls.into_iter();
    loop {
        while running.len() < n {
            let Some(url) = next.next() else { break };
            let (server, args) = (server.clone(), args.clone());
            running.push_back(tokio::spawn(async move {
                let res = server.get(&server.path(&url), &args).await?;
                let body = res.into_body().collect().await;
                let body = body.map_err(|e| format!("{url}: the export broke off: {e}"))?;
                Ok::<_, Box<dyn Error + Send + Sync>>(body.to_bytes())
            }));
        }
        let Some(first) = running.pop_front() else {
            break;
        };
        let hour = first
            .await
            .map_err(|e| format!("a download stopped: {e}"))?;
        out.write_all(&hour.map_err(|e| e.to_string())?)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// `api/series/{series}/{what}?from&to&format[&fields]` as `args` asks.
/// The filter of `--where` and `--q`.
fn filter_of(args: &ExportArgs) -> CliResult<Option<Filter>> {
    Ok(Filter::parse(
        args.wheres.iter().map(String::as_str),
        args.texts.iter().map(String::as_str),
    )?)
}

fn export_path(args: &ExportArgs, what: &str) -> String {
    let mut query = format!(
        "from={}&to={}&format={}",
        export::encode_query(&args.from),
        export::encode_query(&args.to),
        export::encode_query(&args.format)
    );
    if let Some(fields) = &args.fields {
        query.push_str(&format!("&fields={}", export::encode_query(fields)));
    }
    // Checked by `export_to_output` first.
    if let Ok(Some(filter)) = filter_of(args) {
        query.push('&');
        query.push_str(filter.canonical());
    }
    format!(
        "/api/series/{}/{what}?{query}",
        export::encode_query(&args.series)
    )
}

/// The server of `--url`: plain HTTP, a connection per request.
struct Upstream {
    base: Uri,
    authority: axum::http::uri::Authority,
}

impl Upstream {
    fn parse(url: &str) -> CliResult<Upstream> {
        let base: Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
        if base.scheme_str() != Some("http") {
            return Err(format!(
                "--url {url:?}: only http:// is spoken here (put a TLS proxy in front, or use curl)"
            )
            .into());
        }
        let authority = base
            .authority()
            .ok_or_else(|| format!("--url {url:?} has no host"))?
            .clone();
        Ok(Upstream { base, authority })
    }

    /// A path of the API under the URL's own path.
    fn path(&self, api_path: &str) -> String {
        format!("{}{api_path}", self.base.path().trim_end_matches('/'))
    }

    /// GETs `path`; an answer that is not a success is an error saying what the server said.
    async fn get(
        &self,
        path: &str,
        args: &ExportArgs,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Box<dyn Error + Send + Sync>> {
        let authority = &self.authority;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, authority.port_u16().unwrap_or(80)))
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::get(path)
            .header(header::HOST, authority.as_str())
            .header(
                header::ACCEPT_ENCODING,
                if args.gzip { "gzip" } else { "identity" },
            );
        if let Some(token) = &args.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let res = sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?;
        let status = res.status();
        if !status.is_success() {
            let body = res.into_body().collect().await?.to_bytes();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(format!("the server answered {status}: {message}").into());
        }
        Ok(res)
    }
}

/// Returns whether everything offered was imported (or was there already).
pub async fn import(args: ImportArgs) -> CliResult<bool> {
    let series = SeriesName::parse(&args.series)?;
    let sources =
        import::find_sources(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    if sources.hours.is_empty() {
        return Err(format!(
            "{}: no files named YYYYMMDDHH.json.gz found",
            args.dir.display()
        )
        .into());
    }
    let store = open(
        &args.store,
        "stop the server first: imports need the folder alone",
    )
    .await?;
    store.ensure_series(&series, None, None).await?;
    // What the sealer seals once it has caught up with the clock may be imported into.
    tokio::task::block_in_place(|| store.wait_for_sealer());
    let options = import::Options {
        dir: args.dir.clone(),
        series,
        ts_field: args.ts_field.clone(),
    };
    let bar = progress(
        sources.bytes,
        "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}",
    );
    let result = tokio::task::block_in_place(|| {
        import::import(&store, &options, &sources, &mut |done| {
            bar.set_position(done)
        })
    });
    bar.finish_and_clear();
    store.shutdown();
    let report = result?;
    print_report(&report);
    Ok(report.is_complete())
}

fn print_report(r: &Report) {
    println!(
        "imported {} events in {} chunks from {} files ({}); {} events were there already",
        r.events_written,
        r.chunks_written,
        r.files,
        HumanBytes(r.bytes),
        r.events_present
    );
    if r.ignored_files > 0 {
        println!(
            "{} files not named YYYYMMDDHH.json.gz were left alone",
            r.ignored_files
        );
    }
    if r.bad_lines > 0 {
        println!("{} lines could not be used", r.bad_lines);
    }
    if r.chunks_refused > 0 {
        println!(
            "{} chunks ({} events) were refused",
            r.chunks_refused, r.events_refused
        );
    }
    for e in &r.examples {
        println!("  {e}");
    }
}
