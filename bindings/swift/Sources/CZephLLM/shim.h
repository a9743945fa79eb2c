/* The C API, from the checkout's include/ folder. */
#include "../../../../include/zeph_llm.h"
