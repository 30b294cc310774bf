//! Choosing a back end for a new dialog: weighted rendezvous hashing over 3 and 100 back ends.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use siplb::balance::{Backend, choose};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("hashing");
    for n in [3usize, 100] {
        let pool: Vec<Backend> = (0..n)
            .map(|i| {
                Backend::new(
                    format!("b{i}.pool.example"),
                    SocketAddr::from(([10, 0, 0, 1], 5061)),
                    100,
                )
            })
            .collect();
        g.bench_function(format!("choose_among_{n}"), |b| {
            b.iter(|| {
                choose(
                    black_box(b"a84b4c76e66710@pc33.atlanta.example.com"),
                    &pool,
                    |_| true,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
