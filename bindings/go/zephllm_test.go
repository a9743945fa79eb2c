package zephllm

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// modelPath finds the test model as the project's other tests do: ZEPH_MODEL,
// or the fetch script.  A model that cannot be had fails the test.
func modelPath(t *testing.T) string {
	if p := os.Getenv("ZEPH_MODEL"); p != "" {
		return p
	}
	script, _ := filepath.Abs("../../scripts/fetch-models.sh")
	out, err := exec.Command("bash", script, "--path", "smollm2").Output()
	if err != nil {
		t.Fatalf("fetch-models.sh: %v", err)
	}
	return strings.TrimSpace(string(out))
}

var (
	shared     *Engine
	sharedOnce sync.Once
)

func engine(t *testing.T) *Engine {
	sharedOnce.Do(func() {
		e, err := Open(modelPath(t), WithWorkers(2), WithParallel(2))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		shared = e
	})
	if shared == nil {
		t.Fatal("no engine: Open failed (see the first failure)")
	}
	return shared
}

func greedy(n int) *GenerateOptions {
	o := DefaultGenerateOptions()
	o.Temperature = 0
	o.MaxTokens = n
	return &o
}

// llama.cpp's greedy continuation of "The capital of France is" (8 tokens),
// from tests/data/llamacpp-tokens-and-greedy.json.
const capitalReference = " Paris.\n\nThe United States has"

func TestGreedyAnswerMatchesLlamaCpp(t *testing.T) {
	text, usage, err := engine(t).Complete(context.Background(), "The capital of France is", greedy(8))
	if err != nil {
		t.Fatal(err)
	}
	if text != capitalReference {
		t.Fatalf("got %q, want %q", text, capitalReference)
	}
	if usage.PromptTokens != 5 || usage.CompletionTokens != 8 || usage.FinishReason != FinishLength {
		t.Fatalf("usage %+v", usage)
	}
}

func TestChat(t *testing.T) {
	text, usage, err := engine(t).Chat(context.Background(),
		[]Message{{"user", "What is 2+2? Answer with a number."}}, greedy(16))
	if err != nil || text == "" || usage.PromptTokens < 10 {
		t.Fatalf("%q %+v %v", text, usage, err)
	}
}

func TestErrorsWrapTheStatus(t *testing.T) {
	_, err := Open("/nonexistent/model.gguf")
	if !errors.Is(err, ErrIO) {
		t.Fatalf("missing file: %v", err)
	}
	var zerr *Error
	if !errors.As(err, &zerr) || zerr.Status != StatusIO || !strings.Contains(zerr.Message, "model.gguf") {
		t.Fatalf("%#v", err)
	}
	o := greedy(8)
	o.TopP = 2
	_, _, err = engine(t).Complete(context.Background(), "x", o)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "top_p") {
		t.Fatalf("top_p 2: %v", err)
	}
	o = greedy(1 << 20)
	_, _, err = engine(t).Complete(context.Background(), "x", o)
	if !errors.Is(err, ErrContextOverflow) {
		t.Fatalf("overflow: %v", err)
	}
}

func TestTimeoutIsErrTimeout(t *testing.T) {
	o := greedy(200)
	o.Timeout = time.Millisecond
	_, _, err := engine(t).Complete(context.Background(), strings.Repeat("Tell me a story. ", 100), o)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("%v", err)
	}
}

func TestContextCancellationStopsTheWorkPromptly(t *testing.T) {
	e, err := Open(modelPath(t), WithWorkers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(300 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	_, _, err = e.Complete(ctx, "Once upon a time", greedy(2000))
	elapsed := time.Since(start)
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("%v", err)
	}
	t.Logf("cancelled after %v", elapsed)
	// The worker is free again: the next request is not queued behind 2,000
	// tokens of the cancelled one.
	_, usage, err := e.Complete(context.Background(), "Hi", greedy(2))
	if err != nil {
		t.Fatal(err)
	}
	if usage.QueueTime > 5*time.Second {
		t.Fatalf("the next request waited %v", usage.QueueTime)
	}
	// A context deadline is the request's deadline.
	ctx, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	_, _, err = e.Complete(ctx, "Once upon a time", greedy(2000))
	if !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrCancelled) {
		t.Fatalf("%v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("not tied to the context: %v", err)
	}
}

func TestEightGoroutines(t *testing.T) {
	e := engine(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			text, _, err := e.Complete(context.Background(), "The capital of France is", greedy(8))
			if err == nil && text != capitalReference {
				err = errors.New("got " + text)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestStreamAddsUpToComplete(t *testing.T) {
	s, err := engine(t).StreamComplete(context.Background(), "The capital of France is", greedy(8))
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for p := range s.Pieces() {
		parts = append(parts, p)
	}
	if s.Err() != nil || strings.Join(parts, "") != capitalReference || len(parts) < 2 {
		t.Fatalf("%q %v", parts, s.Err())
	}
	if s.Usage().CompletionTokens != 8 {
		t.Fatalf("%+v", s.Usage())
	}
}

func TestStreamCloseEarly(t *testing.T) {
	s, err := engine(t).StreamChat(context.Background(), []Message{{"user", "Tell me a long story."}}, greedy(500))
	if err != nil {
		t.Fatal(err)
	}
	<-s.Pieces()
	s.Close()
	if !errors.Is(s.Err(), ErrCancelled) {
		t.Fatalf("%v", s.Err())
	}
}

// A stream abandoned by its reader is released when its context ends: its
// goroutine ends (Err returns), and the engine's read lock with it (Close,
// which takes the write lock, returns).
func TestAbandonedStreamIsReleasedByItsContext(t *testing.T) {
	e, err := Open(modelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := e.StreamComplete(ctx, "Once upon a time", greedy(2000))
	if err != nil {
		t.Fatal(err)
	}
	<-s.Pieces() // one piece, then the reader walks away
	// Let the goroutine take the next piece and block handing it over.
	time.Sleep(500 * time.Millisecond)
	cancel()
	ended := make(chan error, 1)
	go func() { ended <- s.Err() }()
	select {
	case err := <-ended:
		if !errors.Is(err, ErrCancelled) {
			t.Fatalf("%v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the abandoned stream's goroutine is still running 20 s after its context ended")
	}
	closed := make(chan struct{})
	go func() { e.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close is blocked: the abandoned stream still holds the engine's read lock")
	}
}

func TestCloseIsIdempotentAndLaterCallsFail(t *testing.T) {
	e, err := Open(modelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	if e.ContextLength() < 2048 {
		t.Fatalf("context %d", e.ContextLength())
	}
	e.Close()
	e.Close()
	_, _, err = e.Complete(context.Background(), "x", nil)
	if !errors.Is(err, ErrShutdown) {
		t.Fatalf("%v", err)
	}
	runtime.GC()
}

func TestJSONSchemaConstrainsTheAnswer(t *testing.T) {
	e := engine(t)
	schema := `{"type":"object","properties":{"name":{"type":"string","maxLength":20},` +
		`"age":{"type":"integer","minimum":0,"maximum":150}},"required":["name","age"],"additionalProperties":false}`
	o := greedy(96).WithJSONSchema(schema)
	text, u, err := e.Chat(context.Background(), []Message{{"user", "Describe a person as JSON."}}, &o)
	if err != nil {
		t.Fatal(err)
	}
	if u.FinishReason != FinishStopToken {
		t.Fatalf("finish reason %v: %q", u.FinishReason, text)
	}
	var person struct {
		Name *string `json:"name"`
		Age  *int    `json:"age"`
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&person); err != nil || person.Name == nil || person.Age == nil ||
		len(*person.Name) > 20 || *person.Age < 0 || *person.Age > 150 {
		t.Fatalf("%q does not satisfy the schema (%v)", text, err)
	}
	// A stream under the same constraint gives the same text.
	s, err := e.StreamChat(context.Background(), []Message{{"user", "Describe a person as JSON."}}, &o)
	if err != nil {
		t.Fatal(err)
	}
	var joined strings.Builder
	for p := range s.Pieces() {
		joined.WriteString(p)
	}
	if s.Err() != nil || joined.String() != text {
		t.Fatalf("stream: %v, %q", s.Err(), joined.String())
	}

	bad := greedy(8).WithJSONSchema("{ not json")
	if _, _, err := e.Complete(context.Background(), "x", &bad); !errors.Is(err, ErrGrammar) {
		t.Fatalf("a schema that is not JSON: %v", err)
	}
	two := greedy(8).WithRegex("a").WithGrammar(`start: "a"`)
	if _, _, err := e.Complete(context.Background(), "x", &two); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("two constraints: %v", err)
	}
	re := greedy(16).WithRegex("[0-9]{4}")
	text, _, err = e.Chat(context.Background(), []Message{{"user", "In which year did Apollo 11 land?"}}, &re)
	if err != nil || len(text) != 4 || strings.Trim(text, "0123456789") != "" {
		t.Fatalf("regex: %q, %v", text, err)
	}
}

func TestLogprobsComeWithTheUsage(t *testing.T) {
	e := engine(t)
	o := *greedy(6)
	o.Logprobs = 3
	text, u, err := e.Complete(context.Background(), "The capital of France is", &o)
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Logprobs) != u.CompletionTokens || u.CompletionTokens != 6 {
		t.Fatalf("%d logprobs for %d tokens", len(u.Logprobs), u.CompletionTokens)
	}
	var joined []byte
	for _, lp := range u.Logprobs {
		joined = append(joined, lp.Token.Bytes...)
		if lp.Token.Logprob > 0 || len(lp.Top) != 3 || lp.Top[0].ID != lp.Token.ID {
			t.Fatalf("greedy token %+v", lp)
		}
		if lp.Top[1].Logprob > lp.Top[0].Logprob || lp.Top[2].Logprob > lp.Top[1].Logprob {
			t.Fatalf("alternatives not best first: %+v", lp.Top)
		}
	}
	if string(joined) != text {
		t.Fatalf("tokens' bytes %q, text %q", joined, text)
	}
	s, err := e.StreamComplete(context.Background(), "The capital of France is", &o)
	if err != nil {
		t.Fatal(err)
	}
	for range s.Pieces() {
	}
	if got := s.Usage().Logprobs; len(got) != 6 || got[0].Token.ID != u.Logprobs[0].Token.ID {
		t.Fatalf("stream logprobs %+v", got)
	}
}

func TestEmbedAndOpenBytes(t *testing.T) {
	data, err := os.ReadFile(modelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	e, err := OpenBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	data = nil
	mean, err := e.Embed(context.Background(), "A cat sat on the mat.", PoolingMean)
	if err != nil {
		t.Fatal(err)
	}
	last, err := e.Embed(context.Background(), "A cat sat on the mat.", PoolingLast)
	if err != nil {
		t.Fatal(err)
	}
	norm, dot := 0.0, 0.0
	for i := range mean {
		norm += float64(mean[i]) * float64(mean[i])
		dot += float64(mean[i]) * float64(last[i])
	}
	if len(mean) != 576 || math.Abs(norm-1) > 1e-4 || dot > 0.999 {
		t.Fatalf("len %d, norm %v, mean·last %v", len(mean), norm, dot)
	}
	if _, err := e.Embed(context.Background(), "x", Pooling(9)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("unknown pooling: %v", err)
	}
	if _, err := OpenBytes([]byte("not a model at all, just some bytes")); !errors.Is(err, ErrModel) {
		t.Fatalf("bytes that are no model: %v", err)
	}
}

func TestProgressCanCancelAndLoggerHearsTheLoad(t *testing.T) {
	var seen []float32
	e, err := Open(modelPath(t), WithProgress(func(p float32) bool {
		seen = append(seen, p)
		return true
	}), WithLogger(func(level LogLevel, message string) {
		if level == LogInfo && strings.Contains(message, "loaded") {
			seen = append(seen, -1)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if len(seen) < 3 || seen[0] != 0 || !containsFloat(seen, 1) || !containsFloat(seen, -1) {
		t.Fatalf("progress and log: %v", seen)
	}
	calls := 0
	_, err = Open(modelPath(t), WithProgress(func(float32) bool { calls++; return calls < 2 }))
	if !errors.Is(err, ErrCancelled) || calls != 2 {
		t.Fatalf("cancelled load: %v after %d calls", err, calls)
	}
}

func containsFloat(v []float32, x float32) bool {
	for _, y := range v {
		if y == x {
			return true
		}
	}
	return false
}

func TestLoadIntoMemoryOutlivesTheFile(t *testing.T) {
	data, err := os.ReadFile(modelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "model.gguf")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := Open(path, WithLoadIntoMemory(true))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	// Truncated, then rewritten with other bytes: a mapped model would
	// die of SIGBUS here; the copy does not notice.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("not a model any more"), 0o600); err != nil {
		t.Fatal(err)
	}
	text, _, err := e.Complete(context.Background(), "The capital of France is", greedy(8))
	if err != nil {
		t.Fatal(err)
	}
	if text != capitalReference {
		t.Fatalf("got %q, want %q", text, capitalReference)
	}
}
