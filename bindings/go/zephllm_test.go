package zephllm

import (
	"context"
	"errors"
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
