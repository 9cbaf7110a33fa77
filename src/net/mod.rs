//! Connections: accept, read size-prefixed frames, dispatch, and write the
//! responses back in request order.
//!
//! Each connection runs two tasks on its shard. The reader decodes a frame,
//! starts its handler as a separate task, and queues that task; the writer
//! awaits the queued tasks in order and writes each response. Requests are
//! therefore handled concurrently (a long-polling fetch does not stop a
//! produce behind it from being appended) but answered in order, as the Kafka
//! protocol requires. The queue is bounded, so a client that pipelines more
//! than `connection.max.in.flight.requests` requests stops being read.

mod frame;
mod log_limit;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::protocol::{self, Request};
use crate::runtime::{self, TcpListener, TcpStream};
use crate::shard::Shard;

pub use frame::{FrameError, FrameReader};

/// Responses smaller than this are copied into one buffer before writing;
/// larger payload slices are written from where they are stored.
const WRITE_COALESCE_BYTES: usize = 64 * 1024;

thread_local! {
    /// Per-shard limit on warnings about invalid input: ten a second.
    static INVALID_INPUT_LOG: log_limit::LogLimit = const { log_limit::LogLimit::new(Duration::from_secs(1), 10) };
}

/// Accepts connections on `listener` until the task is dropped.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let errors = Cell::new(0u64);
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let shard = shard.clone();
                runtime::spawn_local(async move { serve_connection(shard, stream).await }).detach();
            }
            Err(err) => {
                let count = errors.get() + 1;
                errors.set(count);
                if count.is_power_of_two() {
                    tracing::warn!(target: "weir::net", shard = shard.id, error = %err, count, "accept failed");
                }
                runtime::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one client connection until it closes or sends something invalid.
async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    tracing::debug!(target: "weir::net", shard = shard.id, peer = ?peer, "connection opened");
    let stream = Rc::new(RefCell::new(stream));
    let mut reader = FrameReader::new(StreamHalf(stream.clone()), shard.config.socket_request_max_bytes);
    let mut writer = StreamHalf(stream.clone());

    let (queue, pending) = runtime::local_bounded_channel::<runtime::Task<Option<Vec<Bytes>>>>(
        shard.config.connection_max_in_flight_requests.max(1),
    );
    let writer_task = runtime::spawn_local(async move {
        while let Some(task) = pending.recv().await {
            let Some(chunks) = task.await else { continue };
            write_chunks(&mut writer, &chunks).await?;
        }
        Ok::<(), std::io::Error>(())
    });

    let close_reason = loop {
        let frame = match reader.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break None,
            Err(FrameError::Io(err)) => break Some(Close::Peer(err.to_string())),
            Err(err) => break Some(Close::Invalid(err.to_string())),
        };
        // Bounded memory: wait until the shard's request byte budget has room.
        let Ok(permit) = shard.request_bytes.acquire_static_permit(frame.len() as u64).await else {
            break Some(Close::Peer("shard is stopping".to_string()));
        };
        let request = match protocol::decode_request(frame) {
            Ok(request) => request,
            Err(decode_error) => match decode_error.into_reply() {
                // An ApiVersions request of a version we do not know gets a v0 reply, then we carry on.
                Ok(reply) => {
                    let task = runtime::spawn_local(async move { Some(reply) });
                    if queue.send(task).await.is_err() {
                        break Some(Close::Peer("writer stopped".to_string()));
                    }
                    continue;
                }
                Err(message) => break Some(Close::Invalid(message)),
            },
        };
        let task = spawn_handler(shard.clone(), request, permit, peer);
        if queue.send(task).await.is_err() {
            break Some(Close::Peer("writer stopped".to_string()));
        }
    };
    match &close_reason {
        Some(Close::Invalid(reason)) => {
            if let Some(suppressed) = INVALID_INPUT_LOG.with(|limit| limit.allow(std::time::Instant::now())) {
                tracing::warn!(target: "weir::net", shard = shard.id, peer = ?peer, reason = %reason, suppressed,
                    "closing connection after invalid input");
            }
        }
        Some(Close::Peer(reason)) => {
            tracing::debug!(target: "weir::net", shard = shard.id, peer = ?peer, reason = %reason, "closing connection");
        }
        None => {}
    }

    drop(queue);
    if let Err(err) = writer_task.await {
        tracing::debug!(target: "weir::net", shard = shard.id, peer = ?peer, error = %err, "write failed");
    }
    tracing::debug!(target: "weir::net", shard = shard.id, peer = ?peer, "connection closed");
}

/// Reason the reader stopped.
enum Close {
    /// The client sent something that is not a valid request.
    Invalid(String),
    /// The socket failed or the connection is being torn down.
    Peer(String),
}

fn spawn_handler(
    shard: Rc<Shard>,
    request: Request,
    permit: runtime::StaticPermit,
    peer: Option<SocketAddr>,
) -> runtime::Task<Option<Vec<Bytes>>> {
    runtime::spawn_local(async move {
        let response = protocol::handle(&shard, request, peer).await;
        drop(permit);
        response
    })
}

async fn write_chunks(writer: &mut StreamHalf, chunks: &[Bytes]) -> std::io::Result<()> {
    let mut pending = Vec::with_capacity(WRITE_COALESCE_BYTES);
    for chunk in chunks {
        if chunk.len() >= WRITE_COALESCE_BYTES {
            if !pending.is_empty() {
                writer.write_all(&pending).await?;
                pending.clear();
            }
            writer.write_all(chunk).await?;
        } else {
            pending.extend_from_slice(chunk);
            if pending.len() >= WRITE_COALESCE_BYTES {
                writer.write_all(&pending).await?;
                pending.clear();
            }
        }
    }
    if !pending.is_empty() {
        writer.write_all(&pending).await?;
    }
    writer.flush().await
}

/// One side of a connection shared by the reader and writer tasks of the same
/// shard. The `RefCell` is borrowed only inside a single poll call, never
/// across an await, so the two tasks never contend for it.
pub struct StreamHalf(Rc<RefCell<TcpStream>>);

impl AsyncRead for StreamHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let mut stream = self.0.borrow_mut();
        Pin::new(&mut *stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StreamHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut stream = self.0.borrow_mut();
        Pin::new(&mut *stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut stream = self.0.borrow_mut();
        Pin::new(&mut *stream).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut stream = self.0.borrow_mut();
        Pin::new(&mut *stream).poll_close(cx)
    }
}
