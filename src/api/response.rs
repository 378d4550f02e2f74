//! Keeping answers within [`RESPONSE_BYTES`], what a default gRPC client
//! accepts. A single record always fits with its value (`--max-value-bytes`
//! is at most 1,835,008); an answer that carries many records does not: a
//! `Batch` of 1,000 value-less completes of 1 MiB records would otherwise
//! answer with 1 GB of values. Such answers leave values out instead, in
//! order: once the next record would take the message past the bound, that
//! record and every later one come without their value, flagged
//! `value_omitted`. Everything else in them (key, version, revisions, state,
//! times) stays exact. Scan pages end early instead (`more`), and watch
//! streams split revisions over several messages (`watch.rs`).

use prost::Message;

use crate::pb;
pub use crate::wire::RESPONSE_BYTES;

/// Room for an answer's own fields besides its repeated records (a revision,
/// a frame id, flags): generous, every one of them is a varint or a bool.
pub const ANSWER_FIELDS_BYTES: usize = 32;

/// Bytes one element of a repeated message field (field number below 16)
/// takes in its parent message: tag, length, and the element itself.
pub fn field_len(encoded_len: usize) -> usize {
    1 + prost::length_delimiter_len(encoded_len) + encoded_len
}

/// Leaves `record`'s value out and says so. An empty value has nothing to
/// leave out and is not flagged.
pub fn omit_value(record: &mut pb::Record) {
    if !record.value.is_empty() {
        record.value = Default::default();
        record.value_omitted = true;
    }
}

/// Leaves out values from the first element of `items` that would take the
/// encoded answer past `limit` on (`record` finds the record inside an
/// element, if it has one). Returns the encoded bytes of `items` as a
/// repeated field.
pub fn bound_values<T: Message>(
    items: &mut [T],
    limit: usize,
    record: fn(&mut T) -> Option<&mut pb::Record>,
) -> usize {
    let mut used = ANSWER_FIELDS_BYTES;
    let mut omitting = false;
    for item in items.iter_mut() {
        let mut len = field_len(item.encoded_len());
        if !omitting && used + len > limit {
            omitting = true;
        }
        if omitting {
            if let Some(r) = record(item) {
                omit_value(r);
            }
            len = field_len(item.encoded_len());
        }
        used += len;
    }
    used - ANSWER_FIELDS_BYTES
}

/// The record a `MutationResponse` carries.
pub fn mutation_record(m: &mut pb::MutationResponse) -> Option<&mut pb::Record> {
    m.record.as_mut()
}

/// The record an `OpResult` of a frame carries: a mutation's or a get's.
pub fn op_record(r: &mut pb::OpResult) -> Option<&mut pb::Record> {
    use pb::op_result::Result as R;
    match r.result.as_mut()? {
        R::Mutation(m) => m.record.as_mut(),
        R::Get(g) => g.record.as_mut(),
        R::Error(_) => None,
    }
}

/// How many of `records` (in order) a scan page holds within `limit`: at
/// least one, so that a scan always advances.
pub fn scan_page_len(records: &[pb::Record], limit: usize) -> usize {
    let mut used = ANSWER_FIELDS_BYTES;
    for (i, r) in records.iter().enumerate() {
        used += field_len(r.encoded_len());
        if used > limit && i > 0 {
            return i;
        }
    }
    records.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutation(key: &str, value_len: usize) -> pb::MutationResponse {
        pb::MutationResponse {
            record: Some(pb::Record {
                key: key.into(),
                value: vec![7; value_len].into(),
                version: 2,
                mod_revision: 1234,
                state: pb::RecordState::Completed as i32,
                ..Default::default()
            }),
            revision: 1234,
        }
    }

    #[test]
    fn a_batch_answer_keeps_values_until_the_bound_then_flags_the_rest() {
        let mut results: Vec<_> = (0..100)
            .map(|i| mutation(&format!("k/{i}"), 1_000_000))
            .collect();
        bound_values(&mut results, RESPONSE_BYTES, mutation_record);
        let answer = pb::BatchResponse {
            results,
            revision: u64::MAX,
        };
        assert!(answer.encoded_len() <= RESPONSE_BYTES);
        let kept = answer
            .results
            .iter()
            .take_while(|m| !m.record.as_ref().unwrap().value_omitted)
            .count();
        assert_eq!(kept, 4, "4 values of 1,000,000 bytes fit 4 MiB - 64 KiB");
        for m in &answer.results[kept..] {
            let r = m.record.as_ref().unwrap();
            assert!(r.value_omitted && r.value.is_empty(), "{}", r.key);
            assert_eq!((r.version, r.mod_revision), (2, 1234));
        }
        for m in &answer.results[..kept] {
            assert_eq!(m.record.as_ref().unwrap().value.len(), 1_000_000);
        }
    }

    #[test]
    fn once_a_value_is_left_out_every_later_one_is_too() {
        let mut results = vec![
            mutation("a", 3_000_000),
            mutation("b", 2_000_000),
            mutation("c", 10),
            mutation("d", 0),
        ];
        let len = bound_values(&mut results, RESPONSE_BYTES, mutation_record);
        let flags: Vec<bool> = results
            .iter()
            .map(|m| m.record.as_ref().unwrap().value_omitted)
            .collect();
        // An empty value has nothing left out.
        assert_eq!(flags, [false, true, true, false]);
        let answer = pb::BatchResponse {
            results,
            revision: 1,
        };
        assert!(answer.encoded_len() <= len + ANSWER_FIELDS_BYTES);
    }

    #[test]
    fn a_frame_answer_bounds_gets_and_mutations_and_passes_errors() {
        use pb::op_result::Result as R;
        let get = |v| pb::OpResult {
            result: Some(R::Get(pb::GetResponse {
                record: mutation("g", v).record,
                revision: 9,
                served_by: u64::MAX,
            })),
        };
        let mut results = vec![
            get(1_800_000),
            pb::OpResult {
                result: Some(R::Error(pb::OpError {
                    code: 5,
                    message: "key not found".into(),
                    ..Default::default()
                })),
            },
            pb::OpResult {
                result: Some(R::Mutation(mutation("m", 1_800_000))),
            },
            get(1_800_000),
        ];
        bound_values(&mut results, RESPONSE_BYTES, op_record);
        let answer = pb::FrameResult { id: 1, results };
        assert!(answer.encoded_len() <= RESPONSE_BYTES);
        let omitted: Vec<Option<bool>> = answer
            .results
            .clone()
            .iter_mut()
            .map(|r| op_record(r).map(|r| r.value_omitted))
            .collect();
        assert_eq!(omitted, [Some(false), None, Some(false), Some(true)]);
    }

    #[test]
    fn a_scan_page_ends_before_the_bound_but_holds_at_least_one_record() {
        let rec = |n| pb::Record {
            key: "k".repeat(512),
            value: vec![1; n].into(),
            ..Default::default()
        };
        let big: Vec<_> = (0..4).map(|_| rec(1_800_000)).collect();
        assert_eq!(scan_page_len(&big, RESPONSE_BYTES), 2);
        assert_eq!(scan_page_len(&big[..1], 1000), 1);
        // 10,000 records of 512-byte keys pass 4 MiB on their keys alone.
        let many: Vec<_> = (0..10_000).map(|_| rec(0)).collect();
        let n = scan_page_len(&many, RESPONSE_BYTES);
        assert!(n > 1000 && n < 10_000, "{n}");
        let page = pb::ScanResponse {
            records: many[..n].to_vec(),
            more: true,
            revision: u64::MAX,
            served_by: u64::MAX,
        };
        assert!(page.encoded_len() <= RESPONSE_BYTES);
        let one_more = pb::ScanResponse {
            records: many[..n + 1].to_vec(),
            more: true,
            revision: u64::MAX,
            served_by: u64::MAX,
        };
        assert!(one_more.encoded_len() > RESPONSE_BYTES - ANSWER_FIELDS_BYTES);
    }
}
