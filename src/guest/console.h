/* What vmhpc-init's boot sequence and its exec service share: lines on the console and the
 * monotonic clock. libc only (vmhpc-init is linked statically without libvmhpc). */
#pragma once

#include <stdint.h>

/* Writes "vmhpc-init: " + the formatted text + '\n' to stderr in one write (cut at 1 KiB). */
void console_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Sleeps ms milliseconds, resuming after signals. */
void console_sleep_ms(long ms);
