//! What an `http` proxy does to heads from the other side
//! (proto::vhost::head::parse_response, proto::vhost::rewrite): response
//! heads read as they grow, never a panic, a complete one stable under a
//! longer buffer; and a rewritten head (request or response) is again a
//! complete head of the same length as what it says, with the same
//! framing, so the body that follows it is still delimited the same way.
//! The first byte picks the piece size and whether the response answers
//! a HEAD request.
#![no_main]

use proto::vhost::head::{parse, parse_response, HeadError, MAX_HEAD};
use proto::vhost::rewrite::{request, response, RequestEdits};

/// A rewritten head parsed again: complete, or None when the fields the
/// rewrite adds took it past this parser's limits (MAX_HEAD bytes,
/// MAX_HEADERS fields; the origin has its own).
fn reparsed<T>(r: Result<Option<T>, HeadError>) -> Option<T> {
    match r {
        Err(HeadError::TooLarge) => None,
        r => Some(
            r.expect("a rewritten head parses")
                .expect("a rewritten head is complete"),
        ),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(ctl >> 1).max(1);
    let to_head = ctl & 1 == 1;
    let set = vec![("X-Fuzz".to_string(), "1".to_string())];

    // As a response from frpc's side.
    let mut seen = None;
    let mut end = 0;
    while end < input.len() {
        end = (end + step).min(input.len());
        match parse_response(&input[..end], to_head) {
            Ok(None) => assert!(end < MAX_HEAD, "partial past the limit"),
            Ok(Some(r)) => {
                assert!(r.head_len <= end);
                match &seen {
                    None => seen = Some(r),
                    Some(s) => assert_eq!(s, &r, "a longer buffer changed the head"),
                }
            }
            Err(_) => {
                assert!(seen.is_none(), "a complete head turned into an error");
                break;
            }
        }
    }
    if let Some(r) = seen {
        let mut out = Vec::new();
        response(&input[..r.head_len], &set, &mut out).expect("a parsed head rewrites");
        if let Some(again) = reparsed(parse_response(&out, to_head)) {
            assert_eq!(again.head_len, out.len());
            assert_eq!((again.status, again.body), (r.status, r.body));
        }
    }

    // As a request from a user.
    if let Ok(Some(req)) = parse(input) {
        let edits = RequestEdits {
            host: if ctl & 2 == 2 { "internal.local" } else { "" },
            set: &set,
            client_ip: "192.0.2.1",
            forwarded_host: req.host,
            proto: "http",
            drop_expect: ctl & 4 == 4,
        };
        let mut out = Vec::new();
        request(&input[..req.head_len], &edits, &mut out).expect("a parsed head rewrites");
        if let Some(again) = reparsed(parse(&out)) {
            assert_eq!(again.head_len, out.len());
            assert_eq!(
                (again.method, again.target, again.body),
                (req.method, req.target, req.body)
            );
        }
    }
});
