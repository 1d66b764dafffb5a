//! Service names, kept in a pinned map beside the datapath's own so that `lbctl` can show
//! "namespace/name:port" from bpffs alone, even while the agent is down. The datapath never
//! reads them.

use crate::user_pod;

/// A NUL-padded UTF-8 name such as `default/echo:http`. 128 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub bytes: [u8; 128],
}

impl ServiceName {
    /// The name, cut at a character boundary if longer than 128 bytes.
    pub fn new(name: &str) -> Self {
        let mut bytes = [0u8; 128];
        let mut end = name.len().min(bytes.len());
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        Self { bytes }
    }

    /// The name up to the first NUL; `None` if the bytes are not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.bytes.len());
        core::str::from_utf8(&self.bytes[..end]).ok()
    }
}

user_pod!(ServiceName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            ServiceName::new("default/echo:http").as_str(),
            Some("default/echo:http")
        );
        assert_eq!(ServiceName::new("").as_str(), Some(""));
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let cut = ServiceName::new(&long);
        assert_eq!(cut.as_str().map(str::len), Some(128));
        let odd = std::format!("a{}", "é".repeat(100));
        assert_eq!(ServiceName::new(&odd).as_str().map(str::len), Some(127));
    }
}
