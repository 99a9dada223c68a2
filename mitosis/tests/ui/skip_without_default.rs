struct Connection;

#[derive(mitosis::Handover)]
struct State {
    generation: u64,
    #[handover(skip)]
    connection: Connection,
}

fn main() {}
