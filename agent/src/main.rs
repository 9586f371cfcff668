static EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));
fn main() {
    let mut bpf = aya::Ebpf::load(EBPF).unwrap();
    let names: Vec<String> = bpf.programs().map(|(n, _)| n.to_string()).collect();
    for n in names {
        let p = bpf.program_mut(&n).unwrap();
        let r = match p {
            aya::programs::Program::RawTracePoint(p) => p.load(),
            aya::programs::Program::TracePoint(p) => p.load(),
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            _ => Ok(()),
        };
        println!("{n}: {:?}", r.map_err(|e| format!("{e:?}")).err().map(|s| {let v: Vec<char> = s.chars().collect(); v[v.len().saturating_sub(2500)..].iter().collect::<String>()}));
    }
}
