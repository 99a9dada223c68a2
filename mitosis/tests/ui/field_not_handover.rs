struct Connection;

#[derive(mitosis::Handover)]
struct State {
    generation: u64,
    connection: Connection,
}

fn main() {}
