#pragma once
// OpenSSL failures as certagent Errors: the thread's error queue is drained into the message,
// so the next failure does not report stale reasons.

#include "core/result.h"

#include <string>
#include <string_view>

namespace certagent::crypto {

// "context: <reason>; <reason>" built from ERR_get_error_all(); the queue is left empty.
// With an empty queue the message is "context: unknown OpenSSL error".
Error openssl_error(std::string_view context);

// The queued reasons as text (may be empty), draining the queue.
std::string drain_openssl_errors();

// Drops queued reasons after a failure that was expected and handled (end of PEM input, ...).
void clear_openssl_errors();

}  // namespace certagent::crypto
