//! A bounded queue with `N` priority classes, served by weighted round robin.
//!
//! Strict priority starves: a steady stream of urgent work would keep low
//! work waiting forever. Here each class `c` has a weight `w[c]`; a *round*
//! serves up to `w[c]` items from each class, most urgent class first, and a
//! class that is empty gives its turn away. With the default weights
//! `[8, 4, 2, 1]`, when every class is backlogged the classes get 8/15, 4/15,
//! 2/15 and 1/15 of the starts, so the lowest class still advances at a
//! known, bounded rate; when only one class has work it gets everything.
//! This is classic weighted round robin (Katevenis et al., "Weighted
//! round-robin cell multiplexing in a general-purpose ATM switch chip",
//! IEEE JSAC 1991), with items of equal cost.
//!
//! Inside a class, order is FIFO.
//!
//! ```
//! use swarm_sched::ClassQueue;
//!
//! let mut q = ClassQueue::<&str, 2>::new([2, 1], 10);
//! for i in ["a1", "a2", "a3"] { q.push(0, i).unwrap(); }
//! q.push(1, "b1").unwrap();
//! let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
//! assert_eq!(order, ["a1", "a2", "b1", "a3"]);
//! ```

use std::collections::VecDeque;

/// The queue is at capacity; the item is handed back.
#[derive(Debug, PartialEq, Eq)]
pub struct Full<T>(pub T);

/// A bounded FIFO-per-class queue served by weighted round robin.
#[derive(Debug)]
pub struct ClassQueue<T, const N: usize> {
    classes: [VecDeque<T>; N],
    weights: [u32; N],
    /// Items the current round may still take from each class.
    credits: [u32; N],
    len: usize,
    capacity: usize,
}

impl<T, const N: usize> ClassQueue<T, N> {
    /// A queue holding at most `capacity` items; a zero weight is treated as 1
    /// (every class must be able to advance).
    pub fn new(weights: [u32; N], capacity: usize) -> Self {
        let weights = weights.map(|w| w.max(1));
        Self {
            classes: std::array::from_fn(|_| VecDeque::new()),
            weights,
            credits: weights,
            len: 0,
            capacity,
        }
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items queued in each class.
    pub fn len_by_class(&self) -> [usize; N] {
        std::array::from_fn(|c| self.classes[c].len())
    }

    /// Appends `item` to `class` (clamped to the last class), or hands it
    /// back when the queue is full.
    pub fn push(&mut self, class: usize, item: T) -> Result<(), Full<T>> {
        if self.len >= self.capacity {
            return Err(Full(item));
        }
        self.classes[class.min(N - 1)].push_back(item);
        self.len += 1;
        Ok(())
    }

    /// Puts `item` back at the head of `class`, ignoring the bound (for work
    /// taken out and returned, which already held a place).
    pub fn push_front(&mut self, class: usize, item: T) {
        self.classes[class.min(N - 1)].push_front(item);
        self.len += 1;
    }

    /// The next item by weighted round robin.
    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        // At most two passes: the first may find every backlogged class out
        // of credit, in which case a new round starts.
        for _ in 0..2 {
            for c in 0..N {
                if self.credits[c] > 0
                    && let Some(item) = self.classes[c].pop_front()
                {
                    self.credits[c] -= 1;
                    self.len -= 1;
                    return Some(item);
                }
            }
            self.credits = self.weights;
        }
        None
    }

    /// Removes and returns the first item matching `pred` (a cancel).
    pub fn remove_first(&mut self, mut pred: impl FnMut(&T) -> bool) -> Option<T> {
        for class in &mut self.classes {
            if let Some(pos) = class.iter().position(&mut pred) {
                self.len -= 1;
                return class.remove(pos);
            }
        }
        None
    }

    /// Removes every item, in class order.
    pub fn drain(&mut self) -> Vec<T> {
        self.len = 0;
        self.classes.iter_mut().flat_map(|c| c.drain(..)).collect()
    }

    /// The item at the head of each class (oldest first within it).
    pub fn heads(&self) -> impl Iterator<Item = &T> {
        self.classes.iter().filter_map(|c| c.front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_class_is_fifo() {
        let mut q = ClassQueue::<u32, 4>::new([8, 4, 2, 1], 100);
        for i in 0..10 {
            q.push(2, i).unwrap();
        }
        let out: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert!(q.is_empty());
    }

    #[test]
    fn backlogged_classes_share_by_weight() {
        let mut q = ClassQueue::<usize, 4>::new([8, 4, 2, 1], 10_000);
        for i in 0..1000 {
            for c in 0..4 {
                q.push(c, c * 10_000 + i).unwrap();
            }
        }
        let mut served = [0usize; 4];
        for _ in 0..150 {
            served[q.pop().unwrap() / 10_000] += 1;
        }
        assert_eq!(served, [80, 40, 20, 10]);
    }

    #[test]
    fn low_class_is_never_starved() {
        let mut q = ClassQueue::<(usize, u32), 4>::new([8, 4, 2, 1], 10_000);
        q.push(3, (3, 0)).unwrap();
        for i in 0..100 {
            q.push(0, (0, i)).unwrap();
        }
        let pos = std::iter::from_fn(|| q.pop())
            .position(|(c, _)| c == 3)
            .unwrap();
        assert!(pos <= 8, "low item served at position {pos}");
    }

    #[test]
    fn capacity_is_enforced_and_item_returned() {
        let mut q = ClassQueue::<u8, 2>::new([1, 1], 2);
        q.push(0, 1).unwrap();
        q.push(1, 2).unwrap();
        assert_eq!(q.push(0, 3), Err(Full(3)));
        assert_eq!(q.len(), 2);
        q.push_front(0, 9);
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(9));
    }

    #[test]
    fn remove_and_counts() {
        let mut q = ClassQueue::<u8, 3>::new([1, 1, 1], 10);
        q.push(0, 1).unwrap();
        q.push(2, 2).unwrap();
        q.push(2, 3).unwrap();
        assert_eq!(q.len_by_class(), [1, 0, 2]);
        assert_eq!(q.remove_first(|&x| x == 2), Some(2));
        assert_eq!(q.remove_first(|&x| x == 7), None);
        assert_eq!(q.len(), 2);
        assert_eq!(q.heads().copied().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(q.drain(), vec![1, 3]);
        assert!(q.is_empty());
        // An out-of-range class is clamped, not a panic.
        q.push(99, 5).unwrap();
        assert_eq!(q.len_by_class(), [0, 0, 1]);
    }
}
