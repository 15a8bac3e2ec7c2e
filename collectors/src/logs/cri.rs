//! Kubernetes container logs (CRI format): `<RFC 3339 time> <stdout|stderr> <P|F> <text>`.
//! A `P` (partial) line continues in the next one; `F` ends the logical line.

/// Longest logical line kept when joining partial lines.
const MAX_JOINED: usize = 64 * 1024;

#[derive(Default)]
pub struct Joiner {
    pending: String,
}

impl Joiner {
    /// One physical CRI line in; a complete logical line out when it ends here.
    pub fn push(&mut self, raw: &str) -> Option<String> {
        let mut it = raw.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(flag)) = (it.next(), it.next(), it.next()) else {
            return Some(raw.to_string());
        };
        let text = it.next().unwrap_or("");
        if flag != "P" && flag != "F" {
            // Not CRI after all: pass through.
            return Some(raw.to_string());
        }
        if self.pending.len() < MAX_JOINED {
            let room = MAX_JOINED - self.pending.len();
            let mut cut = text.len().min(room);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.pending.push_str(&text[..cut]);
        }
        if flag == "F" {
            return Some(std::mem::take(&mut self.pending));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_are_joined() {
        let mut j = Joiner::default();
        assert_eq!(j.push("2026-11-29T13:36:21.1Z stdout P (EngineCore pid=1) INFO 11-29 13:36:21 [shm_broadcast.py:871] No available shared"), None);
        let line = j
            .push("2026-11-29T13:36:21.2Z stdout F  memory broadcast block found in 60 seconds.")
            .unwrap();
        assert_eq!(line, "(EngineCore pid=1) INFO 11-29 13:36:21 [shm_broadcast.py:871] No available shared memory broadcast block found in 60 seconds.");
        assert_eq!(
            j.push("2026-11-29T13:36:22Z stderr F done").as_deref(),
            Some("done")
        );
    }
}
