#[derive(mitosis::Handover)]
struct State {
    #[handover(fd)]
    conn: tokio::net::TcpStream,
}

fn main() {}
