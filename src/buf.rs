//! A slab-indexed pool of read buffers.
//!
//! A buffer is lent for one read and the parse that follows, then given back: idle
//! connections hold none. The pool keeps returned buffers for reuse, so a reactor's
//! steady state allocates nothing.

use slab::Slab;

/// Index of a lent buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufId(pub u32);

/// Buffers of one size, lent by `BufId`.
#[derive(Debug)]
pub struct BufPool {
    size: usize,
    lent: Slab<Box<[u8]>>,
    free: Vec<Box<[u8]>>,
}

impl BufPool {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            lent: Slab::new(),
            free: Vec::new(),
        }
    }

    /// Lends a buffer (reusing a returned one when there is one).
    pub fn lend(&mut self) -> BufId {
        let buf = self
            .free
            .pop()
            .unwrap_or_else(|| vec![0; self.size].into_boxed_slice());
        BufId(self.lent.insert(buf) as u32)
    }

    /// Bytes in each buffer.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn get(&mut self, id: BufId) -> &mut [u8] {
        &mut self.lent[id.0 as usize]
    }

    pub fn give_back(&mut self, id: BufId) {
        self.free.push(self.lent.remove(id.0 as usize));
    }

    /// Buffers currently lent out.
    pub fn lent(&self) -> usize {
        self.lent.len()
    }

    /// Frees the returned buffers (the pool refills on demand).
    pub fn shrink(&mut self) {
        self.free = Vec::new();
        if self.lent.is_empty() {
            self.lent = Slab::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused() {
        let mut pool = BufPool::new(16);
        let a = pool.lend();
        pool.get(a)[0] = 7;
        let ptr = pool.get(a).as_ptr();
        pool.give_back(a);
        assert_eq!(pool.lent(), 0);
        let b = pool.lend();
        assert_eq!(pool.get(b).as_ptr(), ptr);
        assert_eq!(pool.get(b).len(), 16);
    }

    #[test]
    fn shrink_frees_returned_buffers_only() {
        let mut pool = BufPool::new(16);
        let (a, b) = (pool.lend(), pool.lend());
        pool.give_back(a);
        pool.shrink();
        assert_eq!(pool.lent(), 1);
        pool.get(b)[15] = 1;
        pool.give_back(b);
        pool.shrink();
        assert_eq!(pool.lent(), 0);
        let c = pool.lend();
        assert_eq!(pool.get(c).len(), 16);
    }
}
