//! HTTP request heads (proto::vhost::head) read the way a vhost listener
//! reads them: the buffer grows piece by piece and is parsed again after
//! each piece, then the body is followed through what comes after the head
//! in pieces. The first byte picks the piece size. Parsing must never
//! panic; once a head is complete, a longer buffer must give the same
//! head; what it names must lie inside it; and following a body must take
//! the same bytes whatever the piece size.
#![no_main]

use proto::vhost::head::{basic_credentials, parse, BodyFraming, MAX_HEAD};
use proto::vhost::canonical_host;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(ctl).max(1);
    let mut seen = None;
    let mut end = 0;
    while end < input.len() {
        end = (end + step).min(input.len());
        match parse(&input[..end]) {
            Ok(None) => assert!(end < MAX_HEAD, "partial past the limit"),
            Ok(Some(r)) => {
                assert!(r.head_len <= end && r.head_len <= MAX_HEAD);
                let range = input.as_ptr_range();
                for s in [r.method, r.target, r.host, r.path] {
                    if !s.is_empty() {
                        assert!(range.contains(&s.as_ptr()), "field outside the buffer");
                    }
                }
                let _ = canonical_host(r.host);
                for v in [r.authorization, r.proxy_authorization].into_iter().flatten() {
                    let _ = basic_credentials(v);
                }
                let key = (r.head_len, r.body, r.keep_alive, r.host.to_string(), r.path.to_string());
                match &seen {
                    None => seen = Some(key),
                    Some(k) => assert_eq!(k, &key, "a longer buffer changed the head"),
                }
            }
            Err(e) => {
                assert!(seen.is_none(), "a complete head turned into {e}");
                assert!(e.status() == 400 || e.status() == 431);
                return;
            }
        }
    }
    let Some((head_len, body, ..)) = seen else {
        return;
    };
    let rest = &input[head_len..];
    let whole = BodyFraming::new(body).advance(rest);
    let mut f = BodyFraming::new(body);
    let mut taken = 0;
    let mut result = Ok(0);
    for piece in rest.chunks(step) {
        match f.advance(piece) {
            Ok(n) => {
                assert!(n <= piece.len());
                taken += n;
                if n < piece.len() {
                    assert!(f.is_done(), "stopped inside a piece before the end");
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    match (whole, result) {
        (Ok(n), Ok(_)) => assert_eq!(n, taken, "piece size changed the body length"),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("at once {a:?}, in pieces {b:?}"),
    }
});
