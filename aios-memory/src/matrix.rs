//! The exact index's vector matrix: its rows in parts, each one contiguous slice, in slot
//! order.
//!
//! A part is either a chunk of rows the index copied in (single writes, and anything read
//! back from a store) or a batch's block of vectors, which the batch's records view (see
//! [`crate::Embedding`]): a batch's vectors are then held once, not once by the store and
//! again by the index. The rows are kept as written, with each row's inverse norm beside
//! them, so that the floats a record views are the floats it was written with; the scan
//! multiplies a row's dot product by its inverse norm.
//!
//! A chunk holds a fixed number of rows and never moves once allocated, so the scan reads it
//! as one contiguous slice and inserting never copies the rows already stored. Filling a
//! million 384-dimension rows writes 1.5 GB of fresh memory, and with 4 KB pages that is
//! 375,000 page faults: a third of the time of a bulk write went to them. So on Linux a chunk
//! is an anonymous mapping advised to be backed by transparent huge pages (one fault per
//! 2 MB, where the kernel allows it: `madvise` is the mode most distributions ship); anywhere
//! else, or if the mapping fails, it is an ordinary vector. Both give the same rows.

use std::sync::Arc;

use crate::index::unit_scale;

/// Where a chunk's floats live.
#[derive(Debug)]
enum Buf {
    /// An anonymous mapping of `capacity` floats (zeroed by the kernel, touched as filled).
    Mapped(memmap2::MmapMut),
    /// A vector with room for `capacity` floats.
    Heap(Vec<f32>),
}

/// One chunk of the matrix: room for a fixed number of floats, filled from the start.
#[derive(Debug)]
pub(crate) struct Chunk {
    buf: Buf,
    /// The floats filled.
    len: usize,
    /// The floats it has room for.
    capacity: usize,
}

impl Chunk {
    /// An empty chunk with room for `capacity` floats.
    pub fn with_capacity(capacity: usize) -> Chunk {
        let buf =
            mapped(capacity).map_or_else(|| Buf::Heap(Vec::with_capacity(capacity)), Buf::Mapped);
        Chunk {
            buf,
            len: 0,
            capacity,
        }
    }

    /// The floats filled so far, in order.
    pub fn as_slice(&self) -> &[f32] {
        match &self.buf {
            Buf::Mapped(m) => bytemuck::try_cast_slice::<u8, f32>(m)
                .ok()
                .and_then(|all| all.get(..self.len))
                .unwrap_or_default(),
            Buf::Heap(v) => v,
        }
    }

    /// Appends `v` as it is; refused (returning `false`, nothing written) if the chunk has no
    /// room for it.
    pub fn push(&mut self, v: &[f32]) -> bool {
        if self.len + v.len() > self.capacity {
            return false;
        }
        match &mut self.buf {
            Buf::Mapped(m) => {
                let Some(dst) = bytemuck::try_cast_slice_mut::<u8, f32>(m)
                    .ok()
                    .and_then(|all| all.get_mut(self.len..self.len + v.len()))
                else {
                    return false;
                };
                dst.copy_from_slice(v);
            }
            Buf::Heap(h) => h.extend_from_slice(v),
        }
        self.len += v.len();
        true
    }
}

/// One part of the matrix.
#[derive(Debug)]
enum Part {
    /// Rows the index copied in.
    Own(Chunk),
    /// The first `floats` floats of a batch's block, which the batch's records view.
    Shared {
        /// The block.
        block: Arc<Vec<f32>>,
        /// The floats of it that are rows of the matrix.
        floats: usize,
    },
}

impl Part {
    fn as_slice(&self) -> &[f32] {
        match self {
            Part::Own(c) => c.as_slice(),
            Part::Shared { block, floats } => block.get(..*floats).unwrap_or_default(),
        }
    }
}

/// The matrix: rows of `dims` floats, in parts; each row's inverse norm beside it.
#[derive(Debug, Default)]
pub(crate) struct Matrix {
    parts: Vec<Part>,
    /// Per part: its first row.
    starts: Vec<usize>,
    /// Per row: the inverse of its norm (1 for a zero or non-finite norm).
    inverse: Vec<f32>,
    rows: usize,
}

impl Matrix {
    /// Rows per chunk the index copies rows into.
    pub const ROWS: usize = 16_384;

    /// Appends a copy of a row: the next slot, `self.rows()` before the call.
    pub fn push(&mut self, v: &[f32]) {
        let fits = match self.parts.last_mut() {
            Some(Part::Own(c)) => c.push(v),
            _ => false,
        };
        if !fits {
            // a new chunk has room for `ROWS` rows of this length
            let mut c = Chunk::with_capacity(Self::ROWS * v.len());
            c.push(v);
            self.parts.push(Part::Own(c));
            self.starts.push(self.rows);
        }
        self.inverse.push(unit_scale(v));
        self.rows += 1;
    }

    /// Appends the first `rows` rows of `dims` floats of `block` as they are, without
    /// copying them: the next `rows` slots. Refused (returning `false`, nothing changed) if
    /// the block holds fewer floats.
    pub fn adopt(&mut self, block: Arc<Vec<f32>>, rows: usize, dims: usize) -> bool {
        let floats = rows * dims;
        if rows == 0 || dims == 0 || block.len() < floats {
            return false;
        }
        self.inverse.extend(
            block
                .get(..floats)
                .unwrap_or_default()
                .chunks_exact(dims)
                .map(unit_scale),
        );
        self.parts.push(Part::Shared { block, floats });
        self.starts.push(self.rows);
        self.rows += rows;
        true
    }

    /// The rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The row in `slot`, of `dims` floats, as written (read by the approximate index).
    #[cfg(any(feature = "ann", test))]
    pub fn row(&self, slot: usize, dims: usize) -> Option<&[f32]> {
        let part = self.starts.partition_point(|&s| s <= slot).checked_sub(1)?;
        let start = (slot - self.starts.get(part)?) * dims;
        self.parts.get(part)?.as_slice().get(start..start + dims)
    }

    /// The inverse norm of the row in `slot`.
    #[cfg(any(feature = "ann", test))]
    pub fn inverse_norm(&self, slot: usize) -> Option<f32> {
        self.inverse.get(slot).copied()
    }

    /// The parts in slot order: each one's rows (as written, one after the other) and their
    /// inverse norms.
    pub fn parts(&self) -> impl Iterator<Item = (&[f32], &[f32])> {
        // a part's rows end where the next part's start (the last's at `rows`)
        let ends = self.starts.iter().skip(1).copied().chain([self.rows]);
        self.parts
            .iter()
            .zip(self.starts.iter().zip(ends))
            .map(|(p, (&start, end))| {
                (
                    p.as_slice(),
                    self.inverse.get(start..end).unwrap_or_default(),
                )
            })
    }
}

/// An anonymous mapping for `floats` floats, advised to use huge pages (Linux only: elsewhere
/// the ordinary vector is as good). `None` if it cannot be had; the caller falls back to the
/// heap.
#[cfg(target_os = "linux")]
fn mapped(floats: usize) -> Option<memmap2::MmapMut> {
    let bytes = floats.checked_mul(std::mem::size_of::<f32>())?;
    if bytes == 0 {
        return None;
    }
    let m = memmap2::MmapOptions::new().len(bytes).map_anon().ok()?;
    // only advice: without it (a kernel built without transparent huge pages, or set to
    // `never`) the mapping works the same with small pages
    let _ = m.advise(memmap2::Advice::HugePage);
    Some(m)
}

#[cfg(not(target_os = "linux"))]
fn mapped(_floats: usize) -> Option<memmap2::MmapMut> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_fills_to_its_capacity_and_refuses_more() {
        let mut c = Chunk::with_capacity(6);
        assert!(c.push(&[1.0, 2.0, 3.0]));
        assert!(c.push(&[4.0, 5.0, 6.0]));
        assert_eq!(c.as_slice(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(!c.push(&[7.0]), "no room is refused");
        assert_eq!(c.as_slice().len(), 6);
        assert_eq!(c.as_slice().get(3..6), Some(&[4.0, 5.0, 6.0][..]));
        assert_eq!(c.as_slice().get(4..7), None);
    }

    #[test]
    fn the_heap_fallback_holds_the_same_rows() {
        let mut c = Chunk {
            buf: Buf::Heap(Vec::with_capacity(4)),
            len: 0,
            capacity: 4,
        };
        assert!(c.push(&[1.0, -1.0]));
        assert!(!c.push(&[1.0, 1.0, 1.0]));
        assert_eq!(c.as_slice(), &[1.0, -1.0]);
    }

    #[test]
    fn the_matrix_numbers_rows_across_chunks() {
        let mut m = Matrix::default();
        for i in 0..Matrix::ROWS + 3 {
            m.push(&[i as f32, 1.0]);
        }
        assert_eq!(m.rows(), Matrix::ROWS + 3);
        assert_eq!(m.parts().count(), 2);
        assert_eq!(m.row(0, 2), Some(&[0.0, 1.0][..]));
        let last = Matrix::ROWS + 2;
        assert_eq!(m.row(last, 2), Some(&[last as f32, 1.0][..]));
        assert_eq!(m.row(last + 1, 2), None);
    }

    #[test]
    fn adopted_blocks_take_the_next_slots_and_are_not_copied() {
        let mut m = Matrix::default();
        m.push(&[3.0, 4.0]);
        let block = Arc::new(vec![0.0, 2.0, 1.0, 0.0, 9.0, 9.0]);
        assert!(
            !m.adopt(block.clone(), 4, 2),
            "more rows than the block holds"
        );
        assert_eq!(m.rows(), 1, "a refused block changes nothing");
        // two of its three rows
        assert!(m.adopt(block.clone(), 2, 2));
        m.push(&[0.0, 0.0]);
        assert_eq!(m.rows(), 4);
        assert_eq!(m.row(1, 2), Some(&[0.0, 2.0][..]));
        assert_eq!(m.row(2, 2), Some(&[1.0, 0.0][..]));
        assert_eq!(m.row(3, 2), Some(&[0.0, 0.0][..]));
        assert!(
            std::ptr::eq(m.row(1, 2).unwrap().as_ptr(), block.as_ptr()),
            "the rows are the block's own floats"
        );
        // rows as written, their inverse norms beside them (1 for a zero row)
        assert_eq!(m.inverse_norm(0), Some(0.2));
        assert_eq!(m.inverse_norm(1), Some(0.5));
        assert_eq!(m.inverse_norm(3), Some(1.0));
        let parts: Vec<(Vec<f32>, Vec<f32>)> =
            m.parts().map(|(f, i)| (f.to_vec(), i.to_vec())).collect();
        assert_eq!(
            parts,
            vec![
                (vec![3.0, 4.0], vec![0.2]),
                (vec![0.0, 2.0, 1.0, 0.0], vec![0.5, 1.0]),
                (vec![0.0, 0.0], vec![1.0]),
            ]
        );
    }
}
