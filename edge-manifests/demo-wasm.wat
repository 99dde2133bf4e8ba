;; kedge demo pod: a WASI preview 1 module that prints
;;   hello from kedge demo pod, tick N
;; every 2 seconds forever (N = 1, 2, 3, ...), sleeping with poll_oneoff on a
;; relative monotonic-clock subscription. Used by edge-manifests/demo.yaml.
;;
;; Memory layout:
;;     0..8    iovec for fd_write (pointer, length)
;;     8..12   fd_write's nwritten
;;    32..80   poll_oneoff subscription (48 bytes)
;;    80..112  poll_oneoff event (32 bytes)
;;   112..116  poll_oneoff's nevents
;;   128..221  the line being printed: prefix copied in front of the decimal
;;             digits, which are written backwards to end at 220; "\n" at 220
;;   256..288  "hello from kedge demo pod, tick " (32 bytes, template)
;;
;; One contiguous buffer (not two iovecs): wasmtime's fd_write, like writev,
;; may write only the first iovec, so the loop below handles short writes.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 256) "hello from kedge demo pod, tick ")
  (data (i32.const 220) "\n")

  ;; Writes "hello from kedge demo pod, tick <n>\n" to stdout; traps on error.
  (func $print_tick (param $n i64)
    (local $p i32)
    (local $len i32)
    (local.set $p (i32.const 220))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p)
        (i64.add (i64.const 48) (i64.rem_u (local.get $n) (i64.const 10))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $digits (i64.ne (local.get $n) (i64.const 0))))
    ;; Prefix right in front of the digits.
    (local.set $p (i32.sub (local.get $p) (i32.const 32)))
    (memory.copy (local.get $p) (i32.const 256) (i32.const 32))
    (local.set $len (i32.sub (i32.const 221) (local.get $p)))
    ;; Write it all, resuming after short writes.
    (loop $write
      (i32.store (i32.const 0) (local.get $p))
      (i32.store (i32.const 4) (local.get $len))
      (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
        (then unreachable))
      (local.set $p (i32.add (local.get $p) (i32.load (i32.const 8))))
      (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
      (br_if $write (i32.gt_s (local.get $len) (i32.const 0)))))

  ;; Sleeps 2 s: one relative clock subscription on the monotonic clock.
  (func $sleep_2s
    (i64.store (i32.const 32) (i64.const 0))           ;; userdata
    (i32.store8 (i32.const 40) (i32.const 0))          ;; tag: clock
    (i32.store (i32.const 48) (i32.const 1))           ;; clock id: monotonic
    (i64.store (i32.const 56) (i64.const 2000000000))  ;; timeout: 2 s in ns
    (i64.store (i32.const 64) (i64.const 0))           ;; precision
    (i32.store16 (i32.const 72) (i32.const 0))         ;; flags: relative
    (if (call $poll_oneoff (i32.const 32) (i32.const 80) (i32.const 1) (i32.const 112))
      (then unreachable)))

  (func (export "_start")
    (local $n i64)
    (loop $forever
      (local.set $n (i64.add (local.get $n) (i64.const 1)))
      (call $print_tick (local.get $n))
      (call $sleep_2s)
      (br $forever)))
)
