//! The engine: loads a model once, starts the workers, and turns calls into
//! jobs with deadlines.  Every method may be called from any thread.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::Mutex;

use crate::cancel::{cancelled_receiver, CancelToken};
use crate::chat::{self, ChatTemplate, Message};
use crate::constraint::Grammars;
use crate::embed::Pooling;
use crate::error::{Error, ErrorKind, Result};
use crate::generate::{Completion, FinishReason, Usage};
use crate::gguf::Gguf;
use crate::log::LogLevel;
use crate::logprobs::TokenLogprob;
use crate::model::{self, ModelInfo};
use crate::options::{
    check_conversation, check_len, EngineOptions, GenerateOptions, MAX_TEXT_BYTES,
};
use crate::scheduler::{
    self, Fault, Job, KvBudget, Output, Placement, Shared, StreamEvent, WorkerLink,
};
use crate::tokenizer::Tokenizer;

pub struct Engine {
    shared: Arc<Shared>,
    template: ChatTemplate,
    /// Where the chat template came from: "gguf", "option" or "builtin:NAME".
    template_origin: String,
    options: EngineOptions,
    queue: Sender<Job>,
    /// The queue's other end, to drop requests whose caller left when the
    /// queue is full of them.
    queue_rx: Receiver<Job>,
    purging: Mutex<()>,
    links: Vec<Arc<WorkerLink>>,
    /// Dropped by `shutdown`: every receiver then wakes at once.
    shutdown_tx: Mutex<Option<Sender<()>>>,
    shutdown_rx: Receiver<()>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    grammars: Mutex<Option<Arc<Grammars>>>,
    /// Last, so dropped after everything above.
    _give_back: GiveBackMemory,
}

impl Engine {
    /// Loads the model at `path` (mapped, or copied into memory with
    /// `options.load_into_memory`) and starts `options.n_workers` workers.
    pub fn new(path: &Path, options: EngineOptions) -> Result<Self> {
        options.validate()?;
        progress(&options, 0.0)?;
        let gguf = if options.load_into_memory {
            Gguf::open_into_memory(path)?
        } else {
            Gguf::open(path)?
        };
        Self::load(gguf, &path.display(), options)
    }

    /// As `new`, with the model file's bytes in memory (copied: `data` is
    /// not needed once this returns).
    pub fn from_memory(data: &[u8], options: EngineOptions) -> Result<Self> {
        options.validate()?;
        progress(&options, 0.0)?;
        let gguf = Gguf::from_memory(data)?;
        Self::load(gguf, &"<memory>", options)
    }

    fn load(mut gguf: Gguf, shown: &dyn std::fmt::Display, options: EngineOptions) -> Result<Self> {
        let started = Instant::now();
        progress(&options, 0.05)?;
        let tokenizer = Tokenizer::load(&gguf, options.tokenizer_path.as_deref())?;
        if let Some(w) = &tokenizer.warning {
            options.logger.log(LogLevel::Warn, &format!("{shown}: {w}"));
        }
        progress(&options, 0.2)?;
        let token = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or("")
                .to_string()
        };
        // The caller's template (a built-in name or Jinja source), else the
        // file's, else the built-in that fits the model.
        let (template_source, template_origin) = match &options.chat_template {
            Some(t) => match chat::builtin(t) {
                Some(b) => (b.to_string(), format!("builtin:{t}")),
                None => (t.clone(), "option".to_string()),
            },
            None => match gguf.string("tokenizer.chat_template") {
                Some(t) => (t.to_string(), "gguf".to_string()),
                None => {
                    let arch = gguf.architecture().unwrap_or("");
                    let name = chat::builtin_for(arch, |t| tokenizer.token_id(t).is_some());
                    (
                        chat::builtin(name).unwrap_or_default().to_string(),
                        format!("builtin:{name}"),
                    )
                }
            },
        };
        let template = ChatTemplate::new(
            &template_source,
            &token(tokenizer.bos()),
            &token(tokenizer.eos()),
        )?;
        let weights = model::load(
            &mut gguf,
            options.context_length,
            options.threads_per_worker(),
        )
        .map_err(|e| e.context(shown))?;
        for w in &weights.info().warnings {
            options.logger.log(LogLevel::Warn, &format!("{shown}: {w}"));
        }
        drop(gguf);
        progress(&options, 0.95)?;

        let shared = Arc::new(Shared {
            weights,
            tokenizer,
            shutting_down: AtomicBool::new(false),
            fault: Fault::from_env(),
            kv: KvBudget::new(options.kv_memory),
            requeued: Mutex::new(Default::default()),
            logger: options.logger.clone(),
        });
        let (queue, queue_rx) = bounded::<Job>(options.queue_capacity);
        let (shutdown_tx, shutdown_rx) = bounded::<()>(0);
        let mut workers = Vec::with_capacity(options.n_workers);
        let mut links = Vec::with_capacity(options.n_workers);
        for i in 0..options.n_workers {
            let (tx, private) = bounded::<Job>(options.n_parallel);
            let link = Arc::new(WorkerLink {
                tx,
                state: Mutex::new(Placement::default()),
            });
            links.push(link.clone());
            let (shared, queue_rx, shutdown_rx) =
                (shared.clone(), queue_rx.clone(), shutdown_rx.clone());
            let n_parallel = options.n_parallel;
            let spawned = std::thread::Builder::new()
                .name(format!("zeph-worker-{i}"))
                .spawn(move || {
                    scheduler::run(i, n_parallel, shared, link, private, queue_rx, shutdown_rx)
                });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    drop(shutdown_tx);
                    for w in workers {
                        let _ = w.join();
                    }
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("cannot start worker thread {i}: {e}"),
                    ));
                }
            }
        }
        if let Err(e) = progress(&options, 1.0) {
            drop(shutdown_tx);
            for w in workers {
                let _ = w.join();
            }
            return Err(e);
        }
        let info = shared.weights.info();
        options.logger.log(
            LogLevel::Info,
            &format!(
                "{shown}: {} ({}, {}, {} parameters, context {}) loaded in {} ms, {} worker(s)",
                info.name,
                info.architecture,
                info.quantization,
                info.parameter_count,
                info.context_length,
                started.elapsed().as_millis(),
                options.n_workers
            ),
        );
        Ok(Self {
            shared,
            template,
            template_origin,
            options,
            queue,
            queue_rx,
            purging: Mutex::new(()),
            links,
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            shutdown_rx,
            workers: Mutex::new(workers),
            grammars: Mutex::new(None),
            _give_back: GiveBackMemory,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        self.shared.weights.info()
    }

    /// Where the chat template came from: "gguf" (the model file),
    /// "option" (the engine option), or "builtin:NAME".
    pub fn chat_template_origin(&self) -> &str {
        &self.template_origin
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// Continues `prompt`.  Special tokens written in it are parsed, and BOS
    /// is added when the model asks for it (llama.cpp's completion rules).
    pub fn complete(&self, prompt: &str, options: &GenerateOptions) -> Result<Completion> {
        check_len("the prompt", prompt.len(), MAX_TEXT_BYTES, "bytes")?;
        let call = self.start_call(options);
        let tokens = self.prompt_tokens(prompt, options, &call)?;
        self.submit(tokens, options, &call)
    }

    /// As `complete`, with the text delivered piece by piece.
    pub fn stream_complete(&self, prompt: &str, options: &GenerateOptions) -> Result<Stream> {
        check_len("the prompt", prompt.len(), MAX_TEXT_BYTES, "bytes")?;
        let call = self.start_call(options);
        let tokens = self.prompt_tokens(prompt, options, &call)?;
        self.submit_stream(tokens, options, &call)
    }

    /// Renders `messages` with the chat template, then generates the reply.
    pub fn chat(&self, messages: &[Message], options: &GenerateOptions) -> Result<Completion> {
        let call = self.start_call(options);
        let tokens = self.chat_tokens(messages, options, &call)?;
        self.submit(tokens, options, &call)
    }

    /// As `chat`, with the text delivered piece by piece.
    pub fn stream_chat(&self, messages: &[Message], options: &GenerateOptions) -> Result<Stream> {
        let call = self.start_call(options);
        let tokens = self.chat_tokens(messages, options, &call)?;
        self.submit_stream(tokens, options, &call)
    }

    /// A conversation's prompt tokens: rendered, without the template's BOS
    /// when the tokenizer adds one, within the call's deadline.
    fn chat_tokens(
        &self,
        messages: &[Message],
        options: &GenerateOptions,
        call: &Call,
    ) -> Result<Vec<u32>> {
        let text = self.render_for(messages, options, call)?;
        self.prompt_tokens(
            chat::without_leading_bos(&text, self.tokenizer()),
            options,
            call,
        )
    }

    /// The clock of a request starts when the call does: tokenizing and
    /// rendering count against its deadline.
    fn start_call(&self, options: &GenerateOptions) -> Call {
        let start = Instant::now();
        let timeout = options.timeout.unwrap_or(self.options.default_timeout);
        let deadline = start
            .checked_add(timeout)
            .unwrap_or(start + Duration::from_secs(86_400 * 365));
        Call {
            start,
            deadline,
            timeout,
        }
    }

    /// The check the caller-thread work (tokenizing, rendering) makes now
    /// and then: the deadline, the request's cancel token, shutdown.
    fn interrupt<'a>(
        &'a self,
        call: &'a Call,
        cancel: Option<&'a Arc<CancelToken>>,
        what: &'a str,
    ) -> impl Fn() -> Result<()> + 'a {
        move || {
            self.check_running()?;
            if cancel.is_some_and(|c| c.is_cancelled()) {
                return Err(cancelled());
            }
            if Instant::now() >= call.deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the timeout of {} ms passed while {what}",
                        call.timeout.as_millis()
                    ),
                ));
            }
            Ok(())
        }
    }

    /// Renders the chat template for a request.  A render cannot be stopped
    /// midway (its fuel limit bounds it); the deadline is checked after it.
    fn render_for(
        &self,
        messages: &[Message],
        options: &GenerateOptions,
        call: &Call,
    ) -> Result<String> {
        let check = self.interrupt(call, options.cancel.as_ref(), "rendering the chat template");
        check()?;
        let text = self.apply_chat_template(messages, true)?;
        check()?;
        Ok(text)
    }

    /// Tokenizes `text` for `zeph_engine_tokenize`: within the engine's
    /// default timeout, stopped by shutdown.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        check_len("the text", text.len(), MAX_TEXT_BYTES, "bytes")?;
        let call = self.start_call(&GenerateOptions::default());
        let check = self.interrupt(&call, None, "tokenizing");
        self.shared
            .tokenizer
            .encode_with(text, add_special, parse_special, &check)
    }

    fn prompt_tokens(
        &self,
        text: &str,
        options: &GenerateOptions,
        call: &Call,
    ) -> Result<Vec<u32>> {
        options.validate()?;
        self.check_running()?;
        if self.shared.fault == Some(Fault::CallerPanic) {
            panic!("fault injected by ZEPH_FAULT=caller-panic");
        }
        let check = self.interrupt(call, options.cancel.as_ref(), "tokenizing the prompt");
        let mut tokens = self
            .shared
            .tokenizer
            .encode_with(text, true, true, &check)?;
        if tokens.is_empty() {
            // Nothing to condition on: start from BOS, as llama.cpp does.
            match self.shared.tokenizer.bos() {
                Some(bos) => tokens.push(bos),
                None => return Err(Error::invalid_argument("the prompt is empty")),
            }
        }
        let n_ctx = self.info().context_length;
        if tokens.len() + options.max_tokens > n_ctx {
            return Err(Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "the prompt has {} tokens and max_tokens is {}: {} exceeds the context length {n_ctx}",
                    tokens.len(),
                    options.max_tokens,
                    tokens.len() + options.max_tokens
                ),
            ));
        }
        Ok(tokens)
    }

    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        check_conversation(
            messages.len(),
            messages.iter().map(|m| (m.role.len(), m.content.len())),
        )?;
        self.template.render(messages, add_generation_prompt)
    }

    fn check_running(&self) -> Result<()> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            Err(Error::new(
                ErrorKind::Shutdown,
                "the engine has been shut down",
            ))
        } else {
            Ok(())
        }
    }

    /// Makes a job and puts it where a worker will take it: the slot of an
    /// idle worker whose cache holds the longest prefix of the prompt, or
    /// else the shared queue, waiting for room there until the deadline.
    fn enqueue(
        &self,
        tokens: Vec<u32>,
        options: &GenerateOptions,
        output: Output,
        call: &Call,
    ) -> Result<Pending> {
        let Call {
            start,
            deadline,
            timeout,
        } = *call;
        if options.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(cancelled());
        }
        let cancel = Arc::new(CancelToken::new());
        let constraint = match &options.constraint {
            Some(kind) if !matches!(output, Output::Embed(..)) => {
                Some(self.grammars()?.compile(kind)?)
            }
            _ => None,
        };
        let mut job = Job {
            constraint,
            tokens,
            options: options.clone(),
            seed: options.seed.unwrap_or_else(clock_seed),
            enqueued: start,
            deadline,
            cancel: cancel.clone(),
            output,
        };
        // The worker with a free slot whose idle cache the prompt continues
        // (with the longest prefix) takes it directly.
        if options.cache_prompt {
            let best = self
                .links
                .iter()
                .filter_map(|link| {
                    let state = link.state.lock();
                    let shared = state
                        .idle
                        .iter()
                        .map(|t| scheduler::continues(t, &job.tokens))
                        .max()
                        .unwrap_or(0);
                    (state.free > 0 && shared > 0).then_some((shared, link))
                })
                .max_by_key(|(shared, _)| *shared);
            if let Some((_, link)) = best {
                let mut state = link.state.lock();
                if state.free > 0 {
                    match link.tx.try_send(job) {
                        Ok(()) => {
                            state.free -= 1;
                            return Ok(Pending {
                                cancel,
                                deadline,
                                timeout,
                            });
                        }
                        Err(e) => job = e.into_inner(),
                    }
                }
            }
        }
        if self.queue.is_full() {
            self.purge_queue();
        }
        let token = cancelled_receiver(options.cancel.as_ref());
        let wait = deadline.saturating_duration_since(Instant::now());
        select! {
            send(self.queue, job) -> sent => match sent {
                Ok(()) => Ok(Pending { cancel, deadline, timeout }),
                Err(_) => Err(Error::new(ErrorKind::Shutdown, "the engine has been shut down")),
            },
            recv(self.shutdown_rx) -> _ => Err(Error::new(ErrorKind::Shutdown,
                "the engine was shut down while the request waited for room in the queue")),
            recv(token) -> _ => Err(cancelled()),
            default(wait) => Err(Error::new(ErrorKind::QueueFull, format!(
                "the request queue (capacity {}) stayed full for the whole timeout of {} ms",
                self.options.queue_capacity, timeout.as_millis()
            ))),
        }
    }

    /// Drops the queued requests whose caller has given up (timed out,
    /// cancelled), so that they do not hold places in a full queue; the
    /// others keep their order.
    fn purge_queue(&self) {
        let Some(_one) = self.purging.try_lock() else {
            return;
        };
        for _ in 0..self.queue_rx.len() {
            let Ok(job) = self.queue_rx.try_recv() else {
                break;
            };
            match job.interrupted(&self.shared.shutting_down) {
                Err(e) => {
                    if let Output::Stream(tx) = &job.output {
                        let _ = tx.try_send(StreamEvent::Done(Err(e)));
                    }
                }
                Ok(()) => {
                    // Back in line.  Should another caller have taken the
                    // place meanwhile, the job waits beside the queue,
                    // where workers look before they look in the queue.
                    if let Err(e) = self.queue.try_send(job) {
                        self.shared.requeued.lock().push_back(e.into_inner());
                    }
                }
            }
        }
    }

    /// The L2-normalized embedding of `text` (`info().embedding_length`
    /// values): its tokens' final hidden states, pooled.  BOS is added as
    /// the model asks, nothing is appended, special tokens written in the
    /// text are parsed (llama.cpp's `llama-embedding`).  It runs on the
    /// workers, through the queue, with the engine's default deadline.
    pub fn embed(&self, text: &str, pooling: Pooling) -> Result<Vec<f32>> {
        self.check_running()?;
        let tokens = self.shared.tokenizer.encode(text, true, true)?;
        if tokens.is_empty() {
            return Err(Error::invalid_argument(
                "the text is empty and the model adds no BOS: nothing to embed",
            ));
        }
        let n_ctx = self.info().context_length;
        if tokens.len() > n_ctx {
            return Err(Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "the text has {} tokens, more than the context length {n_ctx}",
                    tokens.len()
                ),
            ));
        }
        let options = GenerateOptions::default();
        let call = self.start_call(&options);
        let (reply, reply_rx) = bounded(1);
        let pending = self.enqueue(tokens, &options, Output::Embed(pooling, reply), &call)?;
        self.wait(pending, reply_rx, &options)
    }

    fn submit(
        &self,
        tokens: Vec<u32>,
        options: &GenerateOptions,
        call: &Call,
    ) -> Result<Completion> {
        let (reply, reply_rx) = bounded(1);
        let pending = self.enqueue(tokens, options, Output::Reply(reply), call)?;
        self.wait(pending, reply_rx, options)
    }

    /// Waits for a queued job's answer until its deadline, a cancel or
    /// shutdown; on any of those the job is cancelled.
    fn wait<T>(
        &self,
        pending: Pending,
        reply_rx: Receiver<Result<T>>,
        options: &GenerateOptions,
    ) -> Result<T> {
        let token = cancelled_receiver(options.cancel.as_ref());
        let wait = pending.deadline.saturating_duration_since(Instant::now());
        let outcome = select! {
            recv(reply_rx) -> r => match r {
                // The worker saw the deadline first: the same message.
                Ok(Err(e)) if e.kind == ErrorKind::Timeout => Err(pending.timed_out()),
                Ok(outcome) => outcome,
                Err(_) => Err(Error::new(
                    ErrorKind::Shutdown, "the engine stopped before the request finished")),
            },
            recv(self.shutdown_rx) -> _ => Err(Error::new(
                ErrorKind::Shutdown, "the engine was shut down while the request waited")),
            recv(token) -> _ => Err(cancelled()),
            default(wait) => Err(pending.timed_out()),
        };
        if outcome.is_err() {
            // Queued: the worker will skip it.  Running: it stops at the next token.
            pending.cancel.cancel();
        }
        outcome
    }

    fn submit_stream(
        &self,
        tokens: Vec<u32>,
        options: &GenerateOptions,
        call: &Call,
    ) -> Result<Stream> {
        let (tx, rx) = bounded(STREAM_BUFFER);
        let prompt_tokens = tokens.len();
        let pending = self.enqueue(tokens, options, Output::Stream(tx), call)?;
        Ok(Stream {
            rx,
            pending,
            prompt_tokens,
            pieces: std::sync::atomic::AtomicUsize::new(0),
            user_cancel: options.cancel.clone(),
            shutdown: self.shutdown_rx.clone(),
            state: Mutex::new(StreamState::Running),
            logprobs: Mutex::new(Vec::new()),
            n_logprobs: options.n_logprobs,
        })
    }

    /// The constraint compiler for this model's vocabulary, made by the
    /// first request that asks for structured output.
    fn grammars(&self) -> Result<Arc<Grammars>> {
        let mut g = self.grammars.lock();
        if let Some(g) = &*g {
            return Ok(g.clone());
        }
        let made = Arc::new(Grammars::new(
            &self.shared.tokenizer,
            self.info().vocab_size,
        )?);
        *g = Some(made.clone());
        Ok(made)
    }

    /// Makes every waiting and every later call return `Shutdown` promptly;
    /// running work stops at its next token.  Idempotent.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shutdown_tx.lock().take();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
        for w in self.workers.lock().drain(..) {
            let _ = w.join();
        }
    }
}

/// Hands the memory a dropped engine freed back to the system.  glibc keeps
/// freed memory in its heaps for reuse: measured, a Gemma 3 engine freed
/// after one request left 43 MB (97 MB after a second load) of resident
/// memory behind without this, 1 MB (10 MB) with it.
struct GiveBackMemory;

impl Drop for GiveBackMemory {
    fn drop(&mut self) {
        give_back_memory();
    }
}

/// Returns the free pages of every malloc heap (all threads' arenas) to the
/// system; on glibc only, elsewhere nothing.  Called when an engine is freed
/// and when a worker has been idle for a while (`scheduler::IDLE_TRIM`).
pub(crate) fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the heaps; it may be
    // called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tells the progress callback how far loading got; its "stop" is a
/// `Cancelled` error, which drops everything loaded so far.
fn progress(options: &EngineOptions, done: f32) -> Result<()> {
    match &options.progress {
        Some(f) if !f(done) => Err(Error::new(
            ErrorKind::Cancelled,
            format!(
                "loading was cancelled by the progress callback (at {:.0}%)",
                done * 100.0
            ),
        )),
        _ => Ok(()),
    }
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "the request was cancelled")
}

/// When a request's call started, and its deadline.
#[derive(Clone, Copy)]
struct Call {
    start: Instant,
    deadline: Instant,
    timeout: Duration,
}

/// What the caller keeps of a queued job.
struct Pending {
    cancel: Arc<CancelToken>,
    deadline: Instant,
    timeout: Duration,
}

impl Pending {
    fn timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "no answer within the timeout of {} ms",
                self.timeout.as_millis()
            ),
        )
    }
}

/// Pieces a stream may hold unread before its worker waits.
const STREAM_BUFFER: usize = 32;

enum StreamState {
    Running,
    /// Ended, with the usage and the error it ended with, if any.
    Ended(Usage, Option<Error>),
}

/// Text of one request, piece by piece.  `next` is meant for one consumer
/// thread at a time; `cancel` and `usage` may be called from any thread.
/// Dropping the stream cancels its work.
pub struct Stream {
    rx: Receiver<StreamEvent>,
    pending: Pending,
    /// Known at the start: what a stream that fails can still report.
    prompt_tokens: usize,
    /// Pieces delivered so far.
    pieces: std::sync::atomic::AtomicUsize,
    user_cancel: Option<Arc<CancelToken>>,
    shutdown: Receiver<()>,
    state: Mutex<StreamState>,
    /// The completion's log-probabilities, once it has ended.
    logprobs: Mutex<Vec<TokenLogprob>>,
    n_logprobs: usize,
}

impl Stream {
    /// The next piece, `Ok(None)` once the stream has ended, or an error:
    /// `Timeout` when no piece came within `wait` (the stream goes on) or
    /// when the request's deadline passed (the stream has ended, and
    /// `usage` says so); `Cancelled`, `Shutdown`, or the request's failure.
    pub fn next(&self, wait: Duration) -> Result<Option<String>> {
        if let StreamState::Ended(_, err) = &*self.state.lock() {
            return match err {
                None => Ok(None),
                Some(e) => Err(e.clone()),
            };
        }
        let user = cancelled_receiver(self.user_cancel.as_ref());
        let now = Instant::now();
        let to_deadline = self.pending.deadline.saturating_duration_since(now);
        let event = select! {
            recv(self.rx) -> e => e.map_err(|_| Error::new(ErrorKind::Shutdown,
                "the engine stopped before the stream ended")),
            recv(self.pending.cancel.receiver()) -> _ => Err(cancelled()),
            recv(user) -> _ => Err(cancelled()),
            recv(self.shutdown) -> _ => Err(Error::new(ErrorKind::Shutdown,
                "the engine was shut down")),
            default(wait.min(to_deadline)) => {
                if Instant::now() < self.pending.deadline {
                    return Err(Error::new(ErrorKind::Timeout, format!(
                        "no piece within {} ms; the stream goes on", wait.as_millis())));
                }
                Err(self.pending.timed_out())
            }
        };
        match event {
            Ok(StreamEvent::Piece(p)) => {
                self.pieces.fetch_add(1, Ordering::Relaxed);
                Ok(Some(p))
            }
            Ok(StreamEvent::Done(Ok(c))) => {
                *self.logprobs.lock() = c.logprobs;
                *self.state.lock() = StreamState::Ended(c.usage, None);
                Ok(None)
            }
            Ok(StreamEvent::Done(Err(e))) | Err(e) => {
                self.pending.cancel.cancel();
                // Shutdown, an inference error or a panic stopped the work
                // too; `error` says which.
                let reason = match e.kind {
                    ErrorKind::Timeout => FinishReason::Timeout,
                    _ => FinishReason::Cancelled,
                };
                // Each piece is the text of at least one generated token:
                // a lower bound, the exact count being the worker's.
                let usage = Usage {
                    prompt_tokens: self.prompt_tokens,
                    cached_tokens: 0,
                    worker: 0,
                    completion_tokens: self.pieces.load(Ordering::Relaxed),
                    finish_reason: reason,
                    queue_time: Duration::ZERO,
                    prompt_time: Duration::ZERO,
                    generation_time: Duration::ZERO,
                };
                *self.state.lock() = StreamState::Ended(usage, Some(e.clone()));
                Err(e)
            }
        }
    }

    /// The usage once the stream has ended (`None` while it runs).
    pub fn usage(&self) -> Option<Usage> {
        match &*self.state.lock() {
            StreamState::Ended(u, _) => Some(u.clone()),
            StreamState::Running => None,
        }
    }

    /// The error the stream ended with (`None` while it runs or after a
    /// normal end): `Timeout`, `Cancelled`, `Shutdown`, `Inference`,
    /// `Panic`...
    pub fn error(&self) -> Option<Error> {
        self.outcome().and_then(|(_, e)| e)
    }

    /// The usage and error together, read at once (`None` while it runs).
    pub fn outcome(&self) -> Option<(Usage, Option<Error>)> {
        match &*self.state.lock() {
            StreamState::Ended(u, e) => Some((u.clone(), e.clone())),
            StreamState::Running => None,
        }
    }

    /// The log-probabilities of every generated token (when the request
    /// asked for them) once the stream has ended; `None` while it runs.
    pub fn logprobs(&self) -> Option<Vec<TokenLogprob>> {
        match &*self.state.lock() {
            StreamState::Ended(..) => Some(self.logprobs.lock().clone()),
            StreamState::Running => None,
        }
    }

    /// Whether the request asked for log-probabilities.
    pub fn logprobs_asked(&self) -> bool {
        self.n_logprobs > 0
    }

    /// Stops the work; `next` then returns `Cancelled`.
    pub fn cancel(&self) {
        self.pending.cancel.cancel();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.pending.cancel.cancel();
    }
}

fn clock_seed() -> u64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}
