//! The storage of one chunk of the exact index's vector matrix.
//!
//! A chunk holds a fixed number of rows and never moves once allocated, so the scan reads it
//! as one contiguous slice and inserting never copies the rows already stored. Filling a
//! million 384-dimension rows writes 1.5 GB of fresh memory, and with 4 KB pages that is
//! 375,000 page faults: a third of the time of a bulk write went to them. So on Linux a chunk
//! is an anonymous mapping advised to be backed by transparent huge pages (one fault per
//! 2 MB, where the kernel allows it: `madvise` is the mode most distributions ship); anywhere
//! else, or if the mapping fails, it is an ordinary vector. Both give the same rows.

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

    /// Appends `v` scaled by `scale`, in one pass over the new row; refused (returning
    /// `false`, nothing written) if the chunk has no room for it.
    pub fn push_scaled(&mut self, v: &[f32], scale: f32) -> bool {
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
                for (d, x) in dst.iter_mut().zip(v) {
                    *d = x * scale;
                }
            }
            Buf::Heap(h) => h.extend(v.iter().map(|x| x * scale)),
        }
        self.len += v.len();
        true
    }
}

/// The matrix: rows of `dims` floats in chunks of [`Matrix::ROWS`] rows.
#[derive(Debug, Default)]
pub(crate) struct Matrix {
    chunks: Vec<Chunk>,
    rows: usize,
}

impl Matrix {
    /// Rows per chunk.
    pub const ROWS: usize = 16_384;

    /// Appends a row scaled by `scale`: the next slot, `self.rows()` before the call.
    pub fn push(&mut self, v: &[f32], scale: f32) {
        let fits = self
            .chunks
            .last_mut()
            .is_some_and(|c| c.push_scaled(v, scale));
        if !fits {
            // a new chunk has room for `ROWS` rows of this length
            let mut c = Chunk::with_capacity(Self::ROWS * v.len());
            c.push_scaled(v, scale);
            self.chunks.push(c);
        }
        self.rows += 1;
    }

    /// The rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The row in `slot`, of `dims` floats (read by the approximate index).
    #[cfg(any(feature = "ann", test))]
    pub fn row(&self, slot: usize, dims: usize) -> Option<&[f32]> {
        let start = (slot % Self::ROWS) * dims;
        self.chunks
            .get(slot / Self::ROWS)?
            .as_slice()
            .get(start..start + dims)
    }

    /// The chunks' filled floats, in slot order.
    pub fn chunks(&self) -> impl Iterator<Item = &[f32]> {
        self.chunks.iter().map(Chunk::as_slice)
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
        assert!(c.push_scaled(&[1.0, 2.0, 3.0], 2.0));
        assert!(c.push_scaled(&[4.0, 5.0, 6.0], 0.5));
        assert_eq!(c.as_slice(), &[2.0, 4.0, 6.0, 2.0, 2.5, 3.0]);
        assert!(!c.push_scaled(&[7.0], 1.0), "no room is refused");
        assert_eq!(c.as_slice().len(), 6);
        assert_eq!(c.as_slice().get(3..6), Some(&[2.0, 2.5, 3.0][..]));
        assert_eq!(c.as_slice().get(4..7), None);
    }

    #[test]
    fn the_heap_fallback_holds_the_same_rows() {
        let mut c = Chunk {
            buf: Buf::Heap(Vec::with_capacity(4)),
            len: 0,
            capacity: 4,
        };
        assert!(c.push_scaled(&[1.0, -1.0], 3.0));
        assert!(!c.push_scaled(&[1.0, 1.0, 1.0], 1.0));
        assert_eq!(c.as_slice(), &[3.0, -3.0]);
    }

    #[test]
    fn the_matrix_numbers_rows_across_chunks() {
        let mut m = Matrix::default();
        for i in 0..Matrix::ROWS + 3 {
            m.push(&[i as f32, 1.0], 1.0);
        }
        assert_eq!(m.rows(), Matrix::ROWS + 3);
        assert_eq!(m.chunks().count(), 2);
        assert_eq!(m.row(0, 2), Some(&[0.0, 1.0][..]));
        let last = Matrix::ROWS + 2;
        assert_eq!(m.row(last, 2), Some(&[last as f32, 1.0][..]));
        assert_eq!(m.row(last + 1, 2), None);
    }
}
