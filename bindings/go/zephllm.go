// Package zephllm runs local GGUF language models through libzeph_llm's C
// API: Open an Engine, then Complete, Chat or Stream.  An Engine is safe for
// concurrent use; a cancelled or expired context.Context cancels the work
// in the engine, not only the wait.
package zephllm

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -lzeph_llm -Wl,-rpath,${SRCDIR}/../../target/release
#include <stdlib.h>
#include "zeph_llm.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// Status is a zeph_status code.
type Status int

// The status codes, numbered as in zeph_llm.h.
const (
	StatusOK              Status = C.ZEPH_STATUS_OK
	StatusNullArgument    Status = C.ZEPH_STATUS_NULL_ARGUMENT
	StatusInvalidArgument Status = C.ZEPH_STATUS_INVALID_ARGUMENT
	StatusInvalidUTF8     Status = C.ZEPH_STATUS_INVALID_UTF8
	StatusIO              Status = C.ZEPH_STATUS_IO
	StatusModel           Status = C.ZEPH_STATUS_MODEL
	StatusTokenizer       Status = C.ZEPH_STATUS_TOKENIZER
	StatusTemplate        Status = C.ZEPH_STATUS_TEMPLATE
	StatusContextOverflow Status = C.ZEPH_STATUS_CONTEXT_OVERFLOW
	StatusQueueFull       Status = C.ZEPH_STATUS_QUEUE_FULL
	StatusTimeout         Status = C.ZEPH_STATUS_TIMEOUT
	StatusCancelled       Status = C.ZEPH_STATUS_CANCELLED
	StatusShutdown        Status = C.ZEPH_STATUS_SHUTDOWN
	StatusInference       Status = C.ZEPH_STATUS_INFERENCE
	StatusPanic           Status = C.ZEPH_STATUS_PANIC
	StatusGrammar         Status = C.ZEPH_STATUS_GRAMMAR
)

func (s Status) String() string {
	return C.GoString(C.zeph_status_name(C.zeph_status(s)))
}

// Sentinel errors, one per status: errors.Is(err, zephllm.ErrTimeout).
var (
	ErrNullArgument    = errors.New("zephllm: null argument")
	ErrInvalidArgument = errors.New("zephllm: invalid argument")
	ErrInvalidUTF8     = errors.New("zephllm: invalid UTF-8")
	ErrIO              = errors.New("zephllm: I/O error")
	ErrModel           = errors.New("zephllm: model error")
	ErrTokenizer       = errors.New("zephllm: tokenizer error")
	ErrTemplate        = errors.New("zephllm: chat template error")
	ErrContextOverflow = errors.New("zephllm: context overflow")
	ErrQueueFull       = errors.New("zephllm: queue full")
	ErrTimeout         = errors.New("zephllm: timeout")
	ErrCancelled       = errors.New("zephllm: cancelled")
	ErrShutdown        = errors.New("zephllm: engine shut down")
	ErrInference       = errors.New("zephllm: inference error")
	ErrPanic           = errors.New("zephllm: internal error")
	ErrGrammar         = errors.New("zephllm: structured-output constraint error")
)

var sentinels = map[Status]error{
	StatusNullArgument: ErrNullArgument, StatusInvalidArgument: ErrInvalidArgument,
	StatusInvalidUTF8: ErrInvalidUTF8, StatusIO: ErrIO, StatusModel: ErrModel,
	StatusTokenizer: ErrTokenizer, StatusTemplate: ErrTemplate,
	StatusContextOverflow: ErrContextOverflow, StatusQueueFull: ErrQueueFull,
	StatusTimeout: ErrTimeout, StatusCancelled: ErrCancelled, StatusShutdown: ErrShutdown,
	StatusInference: ErrInference, StatusPanic: ErrPanic, StatusGrammar: ErrGrammar,
}

// Error is a failed call: its status and the library's message.  It
// matches the status's sentinel with errors.Is, and also the context's
// error when a context ended the call.
type Error struct {
	Status  Status
	Message string
	ctxErr  error
}

func (e *Error) Error() string {
	if e.ctxErr != nil {
		return fmt.Sprintf("%s: %s (%v)", e.Status, e.Message, e.ctxErr)
	}
	return fmt.Sprintf("%s: %s", e.Status, e.Message)
}

// Is reports whether target is this error's status sentinel or context error.
func (e *Error) Is(target error) bool {
	return target == sentinels[e.Status] || (e.ctxErr != nil && errors.Is(e.ctxErr, target))
}

// lastError turns a status into an *Error with this thread's message.
// Callers hold the OS thread (runtime.LockOSThread) across the call and
// this read, since the message is per thread.
func lastError(s C.zeph_status) error {
	if s == C.ZEPH_STATUS_OK {
		return nil
	}
	return &Error{Status: Status(s), Message: C.GoString(C.zeph_last_error())}
}

// Version is the library version.
func Version() string { return C.GoString(C.zeph_version()) }

// Engine is a loaded model with its worker threads.  Safe for concurrent
// use by any number of goroutines.
type Engine struct {
	mu        sync.RWMutex // Close takes it exclusively: no call runs while freeing
	ptr       *C.zeph_engine
	closed    chan struct{} // closed by Close: streams stop delivering
	closeOnce sync.Once
	logger    unsafe.Pointer // the log callback's handle, freed by Close
}

// Option configures Open.
type Option func(*C.zeph_engine_options, *handles)

// WithWorkers sets the number of worker threads (default 1).
func WithWorkers(n int) Option {
	return func(o *C.zeph_engine_options, _ *handles) { o.n_workers = C.uint32_t(n) }
}

// WithParallel sets how many sequences each worker runs together, each with
// its own KV cache (continuous batching; default 4).
func WithParallel(n int) Option {
	return func(o *C.zeph_engine_options, _ *handles) { o.n_parallel = C.uint32_t(n) }
}

// WithKVMemoryMiB bounds the KV cache memory of all sequences together
// (default 0: no bound beyond each sequence's context length).
func WithKVMemoryMiB(n int) Option {
	return func(o *C.zeph_engine_options, _ *handles) { o.kv_memory_mib = C.uint32_t(n) }
}

// WithLoadIntoMemory(true) reads the whole model file into memory while
// Open loads it instead of memory-mapping it, so that the file may be
// truncated, rewritten or deleted afterwards without harm (a mapped file
// that shrinks kills the process with SIGBUS).  It costs a private copy of
// the file in the process's memory.  Default false: the file is mapped.
// OpenBytes always copies.
func WithLoadIntoMemory(on bool) Option {
	return func(o *C.zeph_engine_options, _ *handles) {
		o.load_into_memory = 0
		if on {
			o.load_into_memory = 1
		}
	}
}

// WithQueueCapacity sets how many requests may wait for a worker (default 16).
func WithQueueCapacity(n int) Option {
	return func(o *C.zeph_engine_options, _ *handles) { o.queue_capacity = C.uint32_t(n) }
}

// WithContextLength caps the context length (default: the model's own).
func WithContextLength(n int) Option {
	return func(o *C.zeph_engine_options, _ *handles) { o.context_length = C.uint32_t(n) }
}

// WithDefaultTimeout sets the deadline of requests that set none (default 120 s).
func WithDefaultTimeout(d time.Duration) Option {
	return func(o *C.zeph_engine_options, _ *handles) { o.default_timeout_ms = C.uint64_t(d.Milliseconds()) }
}

// Open loads the GGUF model at path.
func Open(path string, opts ...Option) (*Engine, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return open(opts, func(o *C.zeph_engine_options, ptr **C.zeph_engine) C.zeph_status {
		return C.zeph_status(C.zeph_engine_new(cpath, o, ptr))
	})
}

// OpenBytes loads a GGUF model from memory (a model embedded in the
// program, downloaded or decrypted).  The bytes are copied during the
// call: data may be reused as soon as OpenBytes returns.
func OpenBytes(data []byte, opts ...Option) (*Engine, error) {
	if len(data) == 0 {
		return nil, &Error{Status: StatusModel, Message: "<memory>: no bytes"}
	}
	return open(opts, func(o *C.zeph_engine_options, ptr **C.zeph_engine) C.zeph_status {
		// The library copies the bytes during the call and keeps no pointer.
		return C.zeph_status(C.zeph_engine_new_from_memory(unsafe.Pointer(&data[0]), C.size_t(len(data)), o, ptr))
	})
}

func open(opts []Option, load func(*C.zeph_engine_options, **C.zeph_engine) C.zeph_status) (*Engine, error) {
	// In C memory: it holds the callbacks' user_data pointers.
	o := (*C.zeph_engine_options)(C.malloc(C.size_t(unsafe.Sizeof(C.zeph_engine_options{}))))
	defer C.free(unsafe.Pointer(o))
	*o = C.zeph_engine_options_default()
	var h handles
	for _, opt := range opts {
		opt(o, &h)
	}
	defer deleteHandle(h.progress) // called during the load only
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var ptr *C.zeph_engine
	if err := lastError(load(o, &ptr)); err != nil {
		deleteHandle(h.log)
		return nil, err
	}
	e := newEngine(ptr)
	e.logger = h.log
	return e, nil
}

func newEngine(ptr *C.zeph_engine) *Engine {
	e := &Engine{ptr: ptr, closed: make(chan struct{})}
	runtime.SetFinalizer(e, (*Engine).Close)
	return e
}

// Close shuts the engine down (calls in progress return ErrShutdown) and
// frees it.  Calling it again does nothing.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() { close(e.closed) })
	e.mu.RLock()
	if e.ptr != nil {
		C.zeph_engine_shutdown(e.ptr)
	}
	e.mu.RUnlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ptr != nil {
		C.zeph_engine_free(e.ptr)
		e.ptr = nil
		deleteHandle(e.logger)
		e.logger = nil
		runtime.SetFinalizer(e, nil)
	}
	return nil
}

// ContextLength is the number of tokens a request may use.
func (e *Engine) ContextLength() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.ptr == nil {
		return 0
	}
	return int(C.zeph_engine_context_length(e.ptr))
}

// Message is one chat message.
type Message struct {
	Role, Content string
}

// GenerateOptions are the settings of one request.  The zero value is not
// useful: start from DefaultGenerateOptions().
type GenerateOptions struct {
	MaxTokens     int
	Temperature   float32 // 0 = greedy
	TopK          int
	TopP, MinP    float32
	RepeatPenalty float32
	RepeatLastN   int
	Seed          uint64        // SeedRandom = a new seed per request
	Timeout       time.Duration // 0 = the engine's default
	Stop          []string
	NoCachePrompt bool // evaluate the whole prompt even if a worker has it cached
	// Structured output: at most one of JSONSchema (a JSON Schema), Regex
	// (the whole answer matches it) and Grammar (llguidance's Lark-like
	// syntax).  An answer that ends by itself satisfies it.
	JSONSchema, Regex, Grammar string
	// Logprobs asks for the log-probabilities of every generated token
	// and its Logprobs most likely alternatives (0..20; 0 = none): they
	// come in Usage.Logprobs.
	Logprobs int
}

// WithJSONSchema returns o constraining the answer to one JSON value valid
// under schema: opts := zephllm.DefaultGenerateOptions().WithJSONSchema(s).
func (o GenerateOptions) WithJSONSchema(schema string) GenerateOptions {
	o.JSONSchema = schema
	return o
}

// WithRegex returns o constraining the whole answer to match re.
func (o GenerateOptions) WithRegex(re string) GenerateOptions {
	o.Regex = re
	return o
}

// WithGrammar returns o constraining the answer to grammar (llguidance's
// Lark-like syntax).
func (o GenerateOptions) WithGrammar(grammar string) GenerateOptions {
	o.Grammar = grammar
	return o
}

// SeedRandom asks for a different seed on every request.
const SeedRandom = uint64(C.ZEPH_SEED_RANDOM)

// DefaultGenerateOptions are the library's defaults.
func DefaultGenerateOptions() GenerateOptions {
	d := C.zeph_generate_options_default()
	return GenerateOptions{
		MaxTokens: int(d.max_tokens), Temperature: float32(d.temperature), TopK: int(d.top_k),
		TopP: float32(d.top_p), MinP: float32(d.min_p), RepeatPenalty: float32(d.repeat_penalty),
		RepeatLastN: int(d.repeat_last_n), Seed: uint64(d.seed),
	}
}

// FinishReason says why generation ended.
type FinishReason int

// The finish reasons, numbered as in zeph_llm.h.
const (
	FinishNone       FinishReason = C.ZEPH_FINISH_NONE
	FinishStopToken  FinishReason = C.ZEPH_FINISH_STOP_TOKEN
	FinishStopString FinishReason = C.ZEPH_FINISH_STOP_STRING
	FinishLength     FinishReason = C.ZEPH_FINISH_LENGTH
	FinishCancelled  FinishReason = C.ZEPH_FINISH_CANCELLED
	FinishTimeout    FinishReason = C.ZEPH_FINISH_TIMEOUT
	// FinishError: a stream ended in shutdown, an inference error or a panic.
	FinishError FinishReason = C.ZEPH_FINISH_ERROR
)

// Usage is what a request used.
type Usage struct {
	PromptTokens, CompletionTokens, CachedTokens int
	FinishReason                                 FinishReason
	QueueTime, PromptTime, GenerationTime        time.Duration
	// One per generated token when the request set Logprobs > 0.
	Logprobs []TokenLogprob
}

// Choice is a token with its natural log-probability (under the
// distribution the sampler drew from) and its bytes (not necessarily whole
// UTF-8 characters).
type Choice struct {
	ID      uint32
	Logprob float32
	Bytes   []byte
}

// TokenLogprob is a generated token and its most likely alternatives, best
// first.
type TokenLogprob struct {
	Token Choice
	Top   []Choice
}

// usageFrom reads u, and frees the log-probabilities it may hold.
func usageFrom(u *C.zeph_usage) Usage {
	ms := func(v C.double) time.Duration { return time.Duration(float64(v) * float64(time.Millisecond)) }
	usage := Usage{
		PromptTokens: int(u.prompt_tokens), CompletionTokens: int(u.completion_tokens),
		CachedTokens: int(u.cached_tokens), FinishReason: FinishReason(u.finish_reason),
		QueueTime: ms(u.queue_ms), PromptTime: ms(u.prompt_ms), GenerationTime: ms(u.generation_ms),
	}
	if u.logprobs != nil {
		usage.Logprobs = logprobsFrom(u.logprobs)
		C.zeph_logprobs_free(u.logprobs)
		u.logprobs = nil
	}
	return usage
}

func logprobsFrom(lp *C.zeph_logprobs) []TokenLogprob {
	choice := func(i, rank C.size_t) Choice {
		var id C.uint32_t
		var l C.float
		var b *C.char
		var n C.size_t
		C.zeph_logprobs_get(lp, i, rank, &id, &l, &b, &n)
		return Choice{ID: uint32(id), Logprob: float32(l), Bytes: C.GoBytes(unsafe.Pointer(b), C.int(n))}
	}
	count := C.zeph_logprobs_count(lp)
	out := make([]TokenLogprob, count)
	for i := C.size_t(0); i < count; i++ {
		out[i].Token = choice(i, 0)
		nTop := C.zeph_logprobs_n_top(lp, i)
		for r := C.size_t(1); r <= nTop; r++ {
			out[i].Top = append(out[i].Top, choice(i, r))
		}
	}
	return out
}

// request holds the C side of one call: options, strings and the cancel
// token, all in C memory (C must keep no Go pointer), freed by free().
type request struct {
	// A heap object of its own: cgo checks the whole object a pointer
	// points into, and request itself holds Go pointers.
	opts    *C.zeph_generate_options
	stop    **C.char
	nStop   int
	strs    []*C.char // the constraint's strings
	token   *C.zeph_cancel_token
	done    chan struct{}
	ctx     context.Context
	watcher sync.WaitGroup
	// The context's deadline is the request's: a TIMEOUT is the context's.
	ctxDeadline bool
}

func newRequest(ctx context.Context, o *GenerateOptions) (*request, error) {
	if o == nil {
		d := DefaultGenerateOptions()
		o = &d
	}
	r := &request{ctx: ctx, done: make(chan struct{})}
	c := C.zeph_generate_options_default()
	c.max_tokens = C.uint32_t(o.MaxTokens)
	c.temperature = C.float(o.Temperature)
	c.top_k = C.uint32_t(o.TopK)
	c.top_p = C.float(o.TopP)
	c.min_p = C.float(o.MinP)
	c.repeat_penalty = C.float(o.RepeatPenalty)
	c.repeat_last_n = C.uint32_t(o.RepeatLastN)
	c.seed = C.uint64_t(o.Seed)
	timeout := o.Timeout
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return nil, &Error{Status: StatusTimeout, Message: "the context's deadline has passed", ctxErr: ctx.Err()}
		}
		if timeout == 0 || left < timeout {
			timeout = left
			r.ctxDeadline = true
		}
	}
	if timeout > 0 {
		ms := timeout.Milliseconds()
		if ms == 0 {
			ms = 1
		}
		c.timeout_ms = C.uint64_t(ms)
	}
	if o.NoCachePrompt {
		c.cache_prompt = 0
	}
	c.n_logprobs = C.uint32_t(o.Logprobs)
	cstr := func(v string) *C.char {
		if v == "" {
			return nil
		}
		p := C.CString(v)
		r.strs = append(r.strs, p)
		return p
	}
	c.json_schema = cstr(o.JSONSchema)
	c.regex = cstr(o.Regex)
	c.grammar = cstr(o.Grammar)
	if len(o.Stop) > 0 {
		size := C.size_t(len(o.Stop)) * C.size_t(unsafe.Sizeof((*C.char)(nil)))
		r.stop = (**C.char)(C.malloc(size))
		arr := unsafe.Slice(r.stop, len(o.Stop))
		for i, s := range o.Stop {
			arr[i] = C.CString(s)
		}
		r.nStop = len(o.Stop)
		c.stop = r.stop
		c.n_stop = C.size_t(len(o.Stop))
	}
	if s := C.zeph_status(C.zeph_cancel_token_new(&r.token)); s != C.ZEPH_STATUS_OK {
		r.free()
		return nil, &Error{Status: Status(s), Message: "cannot create a cancel token"}
	}
	c.cancel = r.token
	r.opts = new(C.zeph_generate_options)
	*r.opts = c
	// A context that ends cancels the work in the engine.
	r.watcher.Add(1)
	go func() {
		defer r.watcher.Done()
		select {
		case <-ctx.Done():
			C.zeph_cancel_token_cancel(r.token)
		case <-r.done:
		}
	}()
	return r, nil
}

// wrap adds the context's error to a cancellation or timeout it caused.
func (r *request) wrap(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	if r.ctx.Err() != nil && (e.Status == StatusCancelled || e.Status == StatusTimeout) {
		e.ctxErr = r.ctx.Err()
	} else if r.ctxDeadline && e.Status == StatusTimeout {
		e.ctxErr = context.DeadlineExceeded
	}
	return err
}

func (r *request) free() {
	close(r.done)
	r.watcher.Wait()
	if r.token != nil {
		C.zeph_cancel_token_free(r.token)
	}
	for _, p := range r.strs {
		C.free(unsafe.Pointer(p))
	}
	if r.stop != nil {
		for _, s := range unsafe.Slice(r.stop, r.nStop) {
			C.free(unsafe.Pointer(s))
		}
		C.free(unsafe.Pointer(r.stop))
	}
}

// cMessages copies messages into C memory; free with freeMessages.
func cMessages(messages []Message) (*C.zeph_message, int) {
	if len(messages) == 0 {
		return nil, 0
	}
	p := (*C.zeph_message)(C.malloc(C.size_t(len(messages)) * C.size_t(unsafe.Sizeof(C.zeph_message{}))))
	arr := unsafe.Slice(p, len(messages))
	for i, m := range messages {
		arr[i].role = C.CString(m.Role)
		arr[i].content = C.CString(m.Content)
	}
	return p, len(messages)
}

func freeMessages(p *C.zeph_message, n int) {
	if p == nil {
		return
	}
	for _, m := range unsafe.Slice(p, n) {
		C.free(unsafe.Pointer(m.role))
		C.free(unsafe.Pointer(m.content))
	}
	C.free(unsafe.Pointer(p))
}

func (e *Engine) generate(ctx context.Context, opts *GenerateOptions,
	call func(ptr *C.zeph_engine, o *C.zeph_generate_options, text **C.char, u *C.zeph_usage) C.zeph_status,
) (string, Usage, error) {
	r, err := newRequest(ctx, opts)
	if err != nil {
		return "", Usage{}, err
	}
	defer r.free()
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.ptr == nil {
		return "", Usage{}, &Error{Status: StatusShutdown, Message: "the engine is closed"}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var text *C.char
	u := C.zeph_usage{struct_size: C.uint32_t(unsafe.Sizeof(C.zeph_usage{}))}
	if err := lastError(call(e.ptr, r.opts, &text, &u)); err != nil {
		return "", Usage{}, r.wrap(err)
	}
	defer C.zeph_string_free(text)
	return C.GoString(text), usageFrom(&u), nil
}

// Complete continues prompt.  Special tokens written in it are parsed, as
// llama.cpp's completion does.  opts may be nil for the defaults.
func (e *Engine) Complete(ctx context.Context, prompt string, opts *GenerateOptions) (string, Usage, error) {
	cprompt := C.CString(prompt)
	defer C.free(unsafe.Pointer(cprompt))
	return e.generate(ctx, opts, func(p *C.zeph_engine, o *C.zeph_generate_options, t **C.char, u *C.zeph_usage) C.zeph_status {
		return C.zeph_status(C.zeph_engine_complete(p, cprompt, o, t, u))
	})
}

// Chat renders messages with the model's chat template and generates the reply.
func (e *Engine) Chat(ctx context.Context, messages []Message, opts *GenerateOptions) (string, Usage, error) {
	cm, n := cMessages(messages)
	defer freeMessages(cm, n)
	return e.generate(ctx, opts, func(p *C.zeph_engine, o *C.zeph_generate_options, t **C.char, u *C.zeph_usage) C.zeph_status {
		return C.zeph_status(C.zeph_engine_chat(p, cm, C.size_t(n), o, t, u))
	})
}

// Pooling says how Embed turns a text's token states into one vector.
type Pooling int

// The poolings, numbered as in zeph_llm.h.
const (
	PoolingMean Pooling = C.ZEPH_POOLING_MEAN // the average over the tokens
	PoolingLast Pooling = C.ZEPH_POOLING_LAST // the last token's
)

// Embed returns the L2-normalized embedding of text (the model's final
// hidden states, pooled).  It runs on the engine's workers, through its
// queue, under its default timeout; ctx is checked before the call only.
func (e *Engine) Embed(ctx context.Context, text string, pooling Pooling) ([]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Status: StatusCancelled, Message: "the context has ended", ctxErr: err}
	}
	ctext := C.CString(text)
	defer C.free(unsafe.Pointer(ctext))
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.ptr == nil {
		return nil, &Error{Status: StatusShutdown, Message: "the engine is closed"}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var n C.size_t
	// A first call with no room asks for the length.
	s := C.zeph_engine_embed(e.ptr, ctext, C.zeph_pooling(pooling), nil, 0, &n)
	if s != C.ZEPH_STATUS_INVALID_ARGUMENT || n == 0 {
		return nil, lastError(C.zeph_status(s))
	}
	buf := (*C.float)(C.malloc(n * C.size_t(unsafe.Sizeof(C.float(0)))))
	defer C.free(unsafe.Pointer(buf))
	if err := lastError(C.zeph_status(C.zeph_engine_embed(e.ptr, ctext, C.zeph_pooling(pooling), buf, n, &n))); err != nil {
		return nil, err
	}
	out := make([]float32, n)
	for i, v := range unsafe.Slice(buf, n) {
		out[i] = float32(v)
	}
	return out, nil
}
