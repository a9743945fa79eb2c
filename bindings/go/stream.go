package zephllm

/*
#include <stdlib.h>
#include "zeph_llm.h"
*/
import "C"

import (
	"context"
	"runtime"
	"unsafe"
)

// Stream delivers a request's text as it is generated.  Read Pieces until
// it is closed, then check Err and Usage.  Close it to stop early; a stream
// whose context ends is cancelled and released even if nobody reads it.
type Stream struct {
	pieces chan string
	err    error
	usage  Usage
	cancel chan struct{}
	done   chan struct{}
}

// Pieces yields the text piece by piece (whole UTF-8 characters) and is
// closed when the stream ends.
func (s *Stream) Pieces() <-chan string { return s.pieces }

// Err is why the stream ended early (nil when it ended normally); valid once
// Pieces is closed.
func (s *Stream) Err() error { <-s.done; return s.err }

// Usage is what the request used; valid once Pieces is closed.
func (s *Stream) Usage() Usage { <-s.done; return s.usage }

// Close cancels the request if it is still running and waits for the stream
// to end.  Calling it again does nothing.
func (s *Stream) Close() {
	select {
	case <-s.cancel:
	default:
		close(s.cancel)
	}
	for range s.pieces {
	}
	<-s.done
}

// StreamComplete is Complete with the text delivered on a channel.
func (e *Engine) StreamComplete(ctx context.Context, prompt string, opts *GenerateOptions) (*Stream, error) {
	cprompt := C.CString(prompt)
	defer C.free(unsafe.Pointer(cprompt))
	return e.stream(ctx, opts, func(p *C.zeph_engine, o *C.zeph_generate_options, out **C.zeph_stream) C.zeph_status {
		return C.zeph_status(C.zeph_engine_stream_complete(p, cprompt, o, out))
	})
}

// StreamChat is Chat with the text delivered on a channel.
func (e *Engine) StreamChat(ctx context.Context, messages []Message, opts *GenerateOptions) (*Stream, error) {
	cm, n := cMessages(messages)
	defer freeMessages(cm, n)
	return e.stream(ctx, opts, func(p *C.zeph_engine, o *C.zeph_generate_options, out **C.zeph_stream) C.zeph_status {
		return C.zeph_status(C.zeph_engine_stream_chat(p, cm, C.size_t(n), o, out))
	})
}

func (e *Engine) stream(ctx context.Context, opts *GenerateOptions,
	start func(*C.zeph_engine, *C.zeph_generate_options, **C.zeph_stream) C.zeph_status,
) (*Stream, error) {
	r, err := newRequest(ctx, opts)
	if err != nil {
		return nil, err
	}
	e.mu.RLock()
	if e.ptr == nil {
		e.mu.RUnlock()
		r.free()
		return nil, &Error{Status: StatusShutdown, Message: "the engine is closed"}
	}
	var cs *C.zeph_stream
	runtime.LockOSThread()
	err = lastError(start(e.ptr, r.opts, &cs))
	runtime.UnlockOSThread()
	if err != nil {
		e.mu.RUnlock()
		r.free()
		return nil, r.wrap(err)
	}
	s := &Stream{pieces: make(chan string), cancel: make(chan struct{}), done: make(chan struct{})}
	go func() {
		// The engine stays open (read lock) until the stream is freed.
		defer e.mu.RUnlock()
		defer r.free()
		defer close(s.done)
		defer close(s.pieces)
		defer C.zeph_stream_free(cs)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for {
			var piece *C.char
			status := C.zeph_status(C.zeph_stream_next(cs, 100, &piece))
			if status == C.ZEPH_STATUS_TIMEOUT {
				u := C.zeph_usage{struct_size: C.uint32_t(unsafe.Sizeof(C.zeph_usage{}))}
				C.zeph_stream_usage(cs, &u)
				if u.logprobs != nil {
					C.zeph_logprobs_free(u.logprobs) // read again below
				}
				if u.finish_reason == C.ZEPH_FINISH_NONE {
					select {
					case <-s.cancel:
						C.zeph_stream_cancel(cs)
					case <-r.ctx.Done():
						C.zeph_stream_cancel(cs)
					default:
					}
					continue
				}
			}
			if status != C.ZEPH_STATUS_OK || piece == nil {
				s.err = r.wrap(lastError(status))
				u := C.zeph_usage{struct_size: C.uint32_t(unsafe.Sizeof(C.zeph_usage{}))}
				C.zeph_stream_usage(cs, &u)
				s.usage = usageFrom(&u)
				return
			}
			text := C.GoString(piece)
			C.zeph_string_free(piece)
			// A reader that left (its context ended, Close, or the engine
			// closing) must not keep this goroutine, the C stream and the
			// engine's read lock: the request is cancelled and the loop
			// runs on to the stream's end.
			select {
			case s.pieces <- text:
			case <-s.cancel:
				C.zeph_stream_cancel(cs)
			case <-r.ctx.Done():
				C.zeph_stream_cancel(cs)
			case <-e.closed:
				C.zeph_stream_cancel(cs)
			}
		}
	}()
	return s, nil
}
