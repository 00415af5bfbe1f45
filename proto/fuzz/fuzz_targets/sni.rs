//! TLS ClientHello server names (proto::vhost::sni) read from the first
//! bytes of a connection. Must never panic, and a decision made on a prefix
//! of the input (anything but "need more") must be the decision on the
//! whole input: what arrives later cannot change it.
#![no_main]

use proto::vhost::sni::{server_name, Sni};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let whole = server_name(input);
    if let Sni::Name(n) = &whole {
        assert!(!n.is_empty() && n.len() <= 255);
        let _ = proto::vhost::canonical_host(n);
    }
    let step = usize::from(ctl).max(1);
    let mut end = 0;
    while end < input.len() {
        let part = server_name(&input[..end]);
        if part != Sni::NeedMore {
            assert_eq!(part, whole, "decided on {end} bytes, then changed");
            return;
        }
        end += step;
    }
});
