//! The pod scheduler: a pure core (filter, score, preempt over a cluster snapshot) and an async
//! driver that watches pods and nodes and posts bindings.
//!
//! Empty until the scheduler issue is filed and taken.
