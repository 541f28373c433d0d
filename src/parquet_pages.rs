//! Checks a Parquet file's page headers before the `parquet` crate decodes any page, so that a
//! crafted or corrupt file is an error naming it rather than gigabytes of memory or a panic:
//! the crate allocates what a page header declares, and a dictionary page that declares size 0
//! panics inside it (issue 36, items 5 and 9).
//!
//! Each column chunk is walked page by page: the Thrift compact-protocol `PageHeader`
//! (parquet.thrift; the fields read are `uncompressed_page_size`, `compressed_page_size`, the
//! page's `num_values`, and a v2 data page's level lengths and `is_compressed`), then its data.
//! A page must lie inside its chunk, and declare at most `MAX_RECORD_BYTES` per value it holds
//! (the JSONL reader's bound per record) and at most `MAX_PAGE_BYTES` in all. The codecs the
//! crate decodes by reading to the end (gzip, and LZ4's frame fallback) ignore the declared size,
//! so their pages are inflated here first, stopping one byte past it. No tensors.
use anyhow::{bail, ensure, Context, Result};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

/// The most bytes one value of a page may take, as for one JSONL record.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;
/// The most bytes one page may declare (writers aim at 1 MiB).
pub const MAX_PAGE_BYTES: u64 = 64 << 20;
/// The most bytes a page header may take (statistics included).
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// One page's sizes as its header declares them.
#[derive(Debug, Default, PartialEq)]
pub struct PageSizes {
    pub uncompressed: i64,
    pub compressed: i64,
    /// `num_values` of the data or dictionary page header, if it has one.
    pub values: Option<i64>,
    /// A v2 data page's repetition and definition level bytes, stored uncompressed before its data.
    pub levels: i64,
    /// False for a v2 data page stored uncompressed.
    pub is_compressed: bool,
}

/// How the crate decompresses a column chunk's pages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Inflate {
    /// Into a buffer of the declared size (snappy, zstd, LZ4_RAW) or not at all.
    Bounded,
    /// gzip, read to the end of the stream.
    Gzip,
    /// The deprecated Hadoop LZ4, which falls back to an LZ4 frame read to its end.
    Lz4Frame,
}

/// Checks every page of the column chunks at `chunks` (`(start, length)` byte ranges of the
/// file, and how their pages are decompressed).
pub fn check<R: Read + Seek>(file: R, chunks: &[(u64, u64, Inflate)]) -> Result<()> {
    let mut r = BufReader::new(file);
    for &(start, length, inflate) in chunks {
        let end = start.checked_add(length).context("a column chunk's byte range overflows")?;
        let mut at = start;
        while at < end {
            r.seek(SeekFrom::Start(at))?;
            let mut counted = Counted { inner: &mut r, used: 0 };
            let page = header(&mut counted).with_context(|| format!("the page header at byte {at} is not valid"))?;
            let used = counted.used;
            check_page(&page).with_context(|| format!("the page at byte {at}"))?;
            at += used;
            ensure!(page.compressed as u64 <= end - at.min(end), "the page at byte {} declares {} bytes, past the end of its column chunk", at - used, page.compressed);
            if inflate != Inflate::Bounded && page.is_compressed {
                let levels = page.levels.clamp(0, page.compressed.min(page.uncompressed)) as u64;
                r.seek(SeekFrom::Start(at + levels))?;
                let most = page.uncompressed as u64 - levels;
                let out = inflated((&mut r).take(page.compressed as u64 - levels), inflate, most);
                ensure!(out <= most, "the page at byte {} inflates past the {} bytes it declares", at - used, page.uncompressed);
            }
            at += page.compressed as u64;
        }
    }
    Ok(())
}

/// How many bytes `data` inflates to, counted up to one past `most`; a stream that is not
/// valid counts what it gave before its error (the crate fails on it the same way).
fn inflated(data: impl Read, inflate: Inflate, most: u64) -> u64 {
    let mut stream: Box<dyn Read> = match inflate {
        Inflate::Bounded => return 0,
        Inflate::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Inflate::Lz4Frame => Box::new(lz4_flex::frame::FrameDecoder::new(data)),
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    while total <= most {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    total
}

/// The bounds one page's declared sizes must keep.
pub fn check_page(p: &PageSizes) -> Result<()> {
    ensure!(p.compressed >= 0 && p.uncompressed >= 0, "negative page size");
    let values = p.values.unwrap_or(1).max(0) as u64;
    ensure!(p.uncompressed > 0 || values == 0, "the page declares {values} values in 0 bytes");
    let most = (values.max(1) * MAX_RECORD_BYTES).min(MAX_PAGE_BYTES);
    ensure!(
        p.uncompressed as u64 <= most,
        "the page declares {} bytes for {values} values, more than {} MiB a value and {} MiB a page allow",
        p.uncompressed,
        MAX_RECORD_BYTES >> 20,
        MAX_PAGE_BYTES >> 20
    );
    Ok(())
}

/// A reader that counts what it gives and refuses to give more than a header may take.
struct Counted<'a, R> {
    inner: &'a mut R,
    used: u64,
}

impl<R: BufRead> Counted<'_, R> {
    fn byte(&mut self) -> Result<u8> {
        ensure!(self.used < MAX_HEADER_BYTES, "longer than {} MiB", MAX_HEADER_BYTES >> 20);
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b).context("the file ends inside it")?;
        self.used += 1;
        Ok(b[0])
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        ensure!(self.used + n <= MAX_HEADER_BYTES, "longer than {} MiB", MAX_HEADER_BYTES >> 20);
        let skipped = std::io::copy(&mut (&mut *self.inner).take(n), &mut std::io::sink())?;
        ensure!(skipped == n, "the file ends inside it");
        self.used += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            ensure!(shift < 64, "a varint longer than 10 bytes");
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("a varint longer than 10 bytes")
    }

    fn zigzag(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// Skips one value of compact type `t`.
    fn skip_value(&mut self, t: u8, depth: usize) -> Result<()> {
        ensure!(depth < 32, "nested more than 32 deep");
        match t {
            1 | 2 => Ok(()),
            3 => self.byte().map(drop),
            4..=6 => self.varint().map(drop),
            7 => self.skip(8),
            8 => {
                let n = self.varint()?;
                self.skip(n)
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = if h >> 4 == 15 { self.varint()? } else { (h >> 4) as u64 };
                // Booleans in a list take a byte each.
                let elem = match h & 0x0f {
                    1 | 2 => 3,
                    e => e,
                };
                (0..n).try_for_each(|_| self.skip_value(elem, depth + 1))
            }
            11 => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                let fix = |t: u8| if t == 1 || t == 2 { 3 } else { t };
                (0..n).try_for_each(|_| {
                    self.skip_value(fix(kv >> 4), depth + 1)?;
                    self.skip_value(fix(kv & 0x0f), depth + 1)
                })
            }
            12 => self.fields(depth + 1, |c, _, t, d| c.skip_value(t, d)),
            other => bail!("unknown compact type {other}"),
        }
    }

    /// Reads a struct's fields, handing each (id, type) to `each`, until its stop byte.
    fn fields(&mut self, depth: usize, mut each: impl FnMut(&mut Self, i16, u8, usize) -> Result<()>) -> Result<()> {
        let mut id: i16 = 0;
        loop {
            let b = self.byte()?;
            if b == 0 {
                return Ok(());
            }
            let delta = (b >> 4) as i16;
            id = if delta == 0 { i16::try_from(self.zigzag()?).context("a field id out of range")? } else { id.checked_add(delta).context("a field id out of range")? };
            each(self, id, b & 0x0f, depth)?;
        }
    }
}

/// Reads one `PageHeader`.
fn header<R: BufRead>(r: &mut Counted<R>) -> Result<PageSizes> {
    let mut page = PageSizes { uncompressed: -1, compressed: -1, values: None, levels: 0, is_compressed: true };
    r.fields(0, |c, id, t, depth| match (id, t) {
        (2, 5) => c.zigzag().map(|v| page.uncompressed = v),
        (3, 5) => c.zigzag().map(|v| page.compressed = v),
        // DataPageHeader, DictionaryPageHeader and DataPageHeaderV2 all start with num_values;
        // V2 (field 8) has the level lengths (5, 6) and is_compressed (7).
        (5 | 7 | 8, 12) => c.fields(depth + 1, |c, field, t, d| match (field, t) {
            (1, 5) => c.zigzag().map(|v| page.values = Some(v)),
            (5 | 6, 5) if id == 8 => c.zigzag().map(|v| page.levels = page.levels.saturating_add(v.max(0))),
            (7, 1 | 2) if id == 8 => {
                page.is_compressed = t == 1;
                Ok(())
            }
            _ => c.skip_value(t, d),
        }),
        _ => c.skip_value(t, depth),
    })?;
    ensure!(page.uncompressed >= 0 && page.compressed >= 0, "no page sizes, or negative ones");
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact-protocol PageHeader: type DATA_PAGE, the two sizes, a crc, and a data page
    /// header with num_values and three encodings.
    fn encoded(uncompressed: i64, compressed: i64, values: i64) -> Vec<u8> {
        fn zz(v: i64, out: &mut Vec<u8>) {
            let mut u = ((v << 1) ^ (v >> 63)) as u64;
            while u >= 0x80 {
                out.push((u as u8) | 0x80);
                u >>= 7;
            }
            out.push(u as u8);
        }
        let mut b = vec![0x15];
        zz(0, &mut b);
        b.push(0x15);
        zz(uncompressed, &mut b);
        b.push(0x15);
        zz(compressed, &mut b);
        b.push(0x15);
        zz(12345, &mut b);
        b.push(0x1c); // field 5, struct
        b.push(0x15);
        zz(values, &mut b);
        for _ in 0..3 {
            b.push(0x15);
            zz(0, &mut b);
        }
        b.push(0x00); // end of DataPageHeader
        b.push(0x00); // end of PageHeader
        b
    }

    #[test]
    fn page_headers_are_read_and_bounded() {
        let bytes = encoded(3000, 1200, 10);
        let mut r = BufReader::new(std::io::Cursor::new(&bytes));
        let page = header(&mut Counted { inner: &mut r, used: 0 }).unwrap();
        assert_eq!(page, PageSizes { uncompressed: 3000, compressed: 1200, values: Some(10), levels: 0, is_compressed: true });
        check_page(&page).unwrap();
        // A chunk of one such page and its bytes is fine; one byte short is not.
        let mut file = bytes.clone();
        file.extend(vec![0u8; 1200]);
        check(std::io::Cursor::new(&file), &[(0, file.len() as u64, Inflate::Bounded)]).unwrap();
        let e = format!("{:#}", check(std::io::Cursor::new(&file), &[(0, file.len() as u64 - 1, Inflate::Bounded)]).unwrap_err());
        assert!(e.contains("past the end of its column chunk"), "{e}");
        let e = format!("{:#}", check_page(&PageSizes { uncompressed: 2 << 30, compressed: 100, values: Some(1), ..Default::default() }).unwrap_err());
        assert!(e.contains("declares 2147483648 bytes for 1 values"), "{e}");
        let e = format!("{:#}", check_page(&PageSizes { uncompressed: 0, compressed: 0, values: Some(4), ..Default::default() }).unwrap_err());
        assert!(e.contains("4 values in 0 bytes"), "{e}");
        let e = format!("{:#}", check(std::io::Cursor::new(&bytes[..9]), &[(0, 100, Inflate::Bounded)]).unwrap_err());
        assert!(e.contains("the file ends inside it"), "{e}");
    }

    /// A gzip or LZ4-frame page is inflated only to one byte past what its header declares: a
    /// 256 MiB bomb declared as 1 MiB is refused after 1 MiB, an honest page passes, and the
    /// codecs the crate bounds itself are not inflated here.
    #[test]
    fn gzip_and_lz4_frame_pages_inflate_no_further_than_declared() {
        use std::io::Write;
        let zeros = vec![0u8; 1 << 20];
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::best());
        (0..256).for_each(|_| gz.write_all(&zeros).unwrap());
        let gz = gz.finish().unwrap();
        let mut lz = lz4_flex::frame::FrameEncoder::new(vec![]);
        (0..256).for_each(|_| lz.write_all(&zeros).unwrap());
        let lz = lz.finish().unwrap();
        for (payload, inflate) in [(&gz, Inflate::Gzip), (&lz, Inflate::Lz4Frame)] {
            assert!(payload.len() < 2 << 20, "{inflate:?}: the bomb is small ({} bytes)", payload.len());
            assert_eq!(inflated(&payload[..], inflate, 1 << 20), (1 << 20) + (64 << 10), "{inflate:?}: stops at the first read past the bound");
            let mut file = encoded(1 << 20, payload.len() as i64, 1);
            file.extend_from_slice(payload);
            let n = file.len() as u64;
            let e = format!("{:#}", check(std::io::Cursor::new(&file), &[(0, n, inflate)]).unwrap_err());
            assert!(e.contains("the page at byte 0 inflates past the 1048576 bytes it declares"), "{inflate:?}: {e}");
            check(std::io::Cursor::new(&file), &[(0, n, Inflate::Bounded)]).unwrap();
        }
        // An honest page: 900 KiB that declares 900 KiB.
        let text: Vec<u8> = (0..900u32 << 10).map(|i| b'a' + (i % 26) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let mut file = encoded(text.len() as i64, gz.len() as i64, 1);
        file.extend_from_slice(&gz);
        check(std::io::Cursor::new(&file), &[(0, file.len() as u64, Inflate::Gzip)]).unwrap();
        // Not a stream of that codec at all: the crate's own error, not this check's.
        let mut file = encoded(1000, 100, 1);
        file.extend(vec![7u8; 100]);
        check(std::io::Cursor::new(&file), &[(0, file.len() as u64, Inflate::Lz4Frame)]).unwrap();
    }
}
