//! The machine's own limits, measured in the same run as the brokers so
//! that throughput can be read as a fraction of what the hardware allows:
//! loopback TCP bandwidth (one sender, one receiver, as one producer or
//! consumer connection) and sequential disk write bandwidth with a final
//! fsync (what a durable log can at best sustain).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub loopback: f64,
    pub disk_write: f64,
}

const CHUNK: usize = 1 << 20;

/// Streams bytes over one loopback TCP connection for `dur`; returns the
/// bytes per second the receiver got.
pub fn loopback_bandwidth(dur: Duration) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding loopback")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        let buf = vec![0x5au8; CHUNK];
        let end = Instant::now() + dur;
        while Instant::now() < end {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    let took = start.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("loopback sender panicked"))??;
    Ok(total as f64 / took.max(1e-9))
}

/// Writes `bytes` sequentially to a new file in `dir` in 1 MiB writes,
/// then fsyncs it; returns bytes per second including the fsync. The file
/// is removed afterwards.
pub fn disk_write_bandwidth(dir: &Path, bytes: u64) -> Result<f64> {
    let path = dir.join(format!("fjord-bench-disk-{}", std::process::id()));
    let result = (|| -> Result<f64> {
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        // Not zeros: some file systems and devices shortcut those.
        let buf: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        Ok(bytes as f64 / start.elapsed().as_secs_f64().max(1e-9))
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Both limits: loopback for `dur`, disk over `disk_bytes` in `dir`.
pub fn measure(dir: &Path, dur: Duration, disk_bytes: u64) -> Result<Limits> {
    Ok(Limits {
        loopback: loopback_bandwidth(dur)?,
        disk_write: disk_write_bandwidth(dir, disk_bytes)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_moves_bytes() {
        let bw = loopback_bandwidth(Duration::from_millis(200)).unwrap();
        // Any machine that runs the tests moves more than 10 MB/s over
        // loopback; the figure only has to be real, not large.
        assert!(bw > 10e6, "{bw}");
    }

    #[test]
    fn disk_write_is_measured_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let bw = disk_write_bandwidth(dir.path(), 8 << 20).unwrap();
        assert!(bw > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
