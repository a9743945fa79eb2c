package zephllm

/*
#include <stdint.h>
#include <stdlib.h>
#include "zeph_llm.h"
extern _Bool zephGoProgress(void *user_data, float progress);
extern void zephGoLog(void *user_data, zeph_log_level level, char *message);
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// LogLevel is a zeph_log_level.
type LogLevel int

// The log levels, numbered as in zeph_llm.h.
const (
	LogError LogLevel = C.ZEPH_LOG_ERROR
	LogWarn  LogLevel = C.ZEPH_LOG_WARN
	LogInfo  LogLevel = C.ZEPH_LOG_INFO
	LogDebug LogLevel = C.ZEPH_LOG_DEBUG
)

// WithProgress calls f while the model loads (on the goroutine that called
// Open, with the fraction done from 0 to 1); returning false cancels the
// load, and Open returns ErrCancelled.
func WithProgress(f func(progress float32) bool) Option {
	return func(o *C.zeph_engine_options, h *handles) {
		h.progress = newHandle(f)
		o.progress = C.zeph_progress_fn(C.zephGoProgress)
		o.progress_user_data = h.progress
	}
}

// WithLogger sends the library's messages to f instead of standard error.
// f is called on the goroutine that called Open while it loads, then from
// the engine's worker threads until Close returns, by several workers at
// once: it must be safe for concurrent use, return promptly (a worker waits
// for it) and not call the engine.
func WithLogger(f func(level LogLevel, message string)) Option {
	return func(o *C.zeph_engine_options, h *handles) {
		h.log = newHandle(f)
		o.log = C.zeph_log_fn(C.zephGoLog)
		o.log_user_data = h.log
	}
}

// handles are the callbacks' cgo handles, each in a C-allocated word that
// the C side holds as its user_data.
type handles struct {
	progress, log unsafe.Pointer
}

func newHandle(v any) unsafe.Pointer {
	p := C.malloc(C.size_t(unsafe.Sizeof(C.uintptr_t(0))))
	*(*C.uintptr_t)(p) = C.uintptr_t(cgo.NewHandle(v))
	return p
}

func deleteHandle(p unsafe.Pointer) {
	if p != nil {
		cgo.Handle(*(*C.uintptr_t)(p)).Delete()
		C.free(p)
	}
}

//export zephGoProgress
func zephGoProgress(userData unsafe.Pointer, progress C.float) C._Bool {
	f := cgo.Handle(*(*C.uintptr_t)(userData)).Value().(func(float32) bool)
	return C._Bool(f(float32(progress)))
}

//export zephGoLog
func zephGoLog(userData unsafe.Pointer, level C.zeph_log_level, message *C.char) {
	f := cgo.Handle(*(*C.uintptr_t)(userData)).Value().(func(LogLevel, string))
	f(LogLevel(level), C.GoString(message))
}
