#[derive(mitosis::Handover)]
#[handover(version = 3, removed(name = "legacy", ty = "u32", since = 3, after = "nik"))]
struct State {
    generation: u64,
    nick: String,
}

fn main() {}
