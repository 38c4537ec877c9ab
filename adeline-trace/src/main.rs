static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/adeline-trace"));
fn main() {
    let mut ebpf = aya::Ebpf::load(OBJ).unwrap();
    for (n, _) in ebpf.programs_mut() { println!("{n}"); }
}
