//! RecordIO framing: `<decimal byte length>\n<payload>`, repeated.
use thiserror::Error;

/// Frames one record.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordIoError {
    #[error("recordio: bad record header {0:?}")]
    BadHeader(String),
    #[error("recordio: record of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
}

/// An incremental decoder: feed bytes as they arrive, take whole records out.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_record: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(64 * 1024 * 1024)
    }
}

impl Decoder {
    pub fn new(max_record: usize) -> Self {
        Self { buf: Vec::new(), max_record }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole record, if one has arrived.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordIoError> {
        let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > 20 {
                return Err(RecordIoError::BadHeader(String::from_utf8_lossy(&self.buf[..20]).into()));
            }
            return Ok(None);
        };
        let header = &self.buf[..nl];
        let text = std::str::from_utf8(header)
            .map_err(|_| RecordIoError::BadHeader(String::from_utf8_lossy(header).into()))?;
        let len: usize = text.trim().parse().map_err(|_| RecordIoError::BadHeader(text.to_string()))?;
        if len > self.max_record {
            return Err(RecordIoError::TooLarge(len, self.max_record));
        }
        if self.buf.len() < nl + 1 + len {
            return Ok(None);
        }
        let record = self.buf[nl + 1..nl + 1 + len].to_vec();
        self.buf.drain(..nl + 1 + len);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_split_anywhere() {
        let mut wire = encode(b"{\"type\":\"HEARTBEAT\"}");
        wire.extend(encode("é".as_bytes()));
        for split in 0..wire.len() {
            let mut d = Decoder::default();
            d.feed(&wire[..split]);
            let mut got = Vec::new();
            while let Some(r) = d.next_record().unwrap() {
                got.push(r);
            }
            d.feed(&wire[split..]);
            while let Some(r) = d.next_record().unwrap() {
                got.push(r);
            }
            assert_eq!(got, vec![b"{\"type\":\"HEARTBEAT\"}".to_vec(), "é".as_bytes().to_vec()]);
        }
    }

    #[test]
    fn bad_header_is_an_error() {
        let mut d = Decoder::default();
        d.feed(b"abc\n{}");
        assert!(d.next_record().is_err());
    }

    proptest! {
        #[test]
        fn any_records_roundtrip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 0..10), chunk in 1usize..50) {
            let wire: Vec<u8> = records.iter().flat_map(|r| encode(r)).collect();
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                d.feed(c);
                while let Some(r) = d.next_record().unwrap() { got.push(r); }
            }
            prop_assert_eq!(got, records);
        }
    }
}
