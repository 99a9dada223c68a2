#[derive(mitosis::Handover)]
#[handover(version = 3, removed(name = "nick", ty = "String", since = 3))]
struct State {
    generation: u64,
    nick: String,
}

fn main() {}
