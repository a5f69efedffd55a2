//! `make bench`: benchmarks of ferrite-lb on the box and a 3-node network-namespace lab (not tests).
//! Writes docs/benchmarks.md with `--write docs/benchmarks.md`; see `--help`.
#![forbid(unsafe_code)]

#[path = "../bench/mod.rs"]
mod bench;

fn main() {
    let opts = match bench::Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e:#}\n\n{}", bench::USAGE);
            std::process::exit(2);
        }
    };
    if opts.help {
        println!("{}", bench::USAGE);
        return;
    }
    std::process::exit(bench::main(opts));
}
