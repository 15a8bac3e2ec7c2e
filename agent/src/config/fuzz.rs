//! The configuration parser over arbitrary text and over mutations of a real file: it
//! answers with a configuration or an error naming the line and key, never a panic.

use super::Config;
use proptest::prelude::*;

const REAL: &str = include_str!("../../../deploy/hangwatch.toml");

proptest! {
    #[test]
    fn any_text_is_parsed_or_refused(s in any::<String>()) {
        let _ = Config::parse(&s, "fuzz.toml");
    }

    #[test]
    fn mutations_of_the_shipped_file(at in 0usize..4096, insert in "[\\[\\]=\"a-z_.0-9 \\n#-]{0,12}") {
        let mut text = REAL.to_string();
        let at = (0..=at.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &insert);
        if let Err(e) = Config::parse(&text, "fuzz.toml") {
            prop_assert!(e.to_string().contains("fuzz.toml"), "{e}");
        }
    }
}
