//! Tiles frames of one or more frame folders into a PNG contact sheet, for
//! looking at the synthetic signer: `contact_sheet OUT.png DIR [DIR...]`
//! (every third frame of each folder, one row per folder).

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 2, "usage: contact_sheet OUT.png DIR [DIR...]");
    let rows: Vec<Vec<image::RgbImage>> = args[1..]
        .iter()
        .map(|d| {
            let files = signrt_runtime::source::list_frames(std::path::Path::new(d))?;
            files
                .iter()
                .step_by(3)
                .take(12)
                .map(|f| Ok(image::open(f)?.into_rgb8()))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .collect::<anyhow::Result<_>>()?;
    let (w, h) = (rows[0][0].width(), rows[0][0].height());
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(1) as u32;
    let mut sheet = image::RgbImage::new(w * cols, h * rows.len() as u32);
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            image::imageops::replace(
                &mut sheet,
                img,
                (c as u32 * w) as i64,
                (r as u32 * h) as i64,
            );
        }
    }
    sheet.save(&args[0])?;
    Ok(())
}
