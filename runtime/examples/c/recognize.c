/* signrt's C API in one page: recognise a Y4M clip and print each sentence's glosses.
 *
 *   cargo build --release -p signrt-capi
 *   cc -O2 -I runtime/capi/include runtime/examples/c/recognize.c \
 *      target/release/libsignrt.a -Wl,-z,noexecstack -lpthread -ldl -lm -o recognize
 *   ./recognize models/demo models/samples/s14_v00362.y4m
 *
 * Reads 8-bit Y4M in 4:2:0 (handed over as I420) or 4:4:4 (converted to RGB here), the two
 * forms `ffmpeg -f yuv4mpegpipe` writes for camera and screen sources. */
#include <signrt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static int fail(const char *what) {
    fprintf(stderr, "error: %s: %s\n", what, signrt_last_error());
    return 1;
}

/* Decodes what is waiting; prints and clears a sentence that has ended. */
static int drain(SignrtStream *s) {
    while (signrt_stream_is_ready(s) == 1)
        if (signrt_stream_decode(s) != SIGNRT_STATUS_OK) return fail("decode");
    if (signrt_stream_is_endpoint(s) == 1) {
        char *text = NULL;
        if (signrt_stream_result_text(s, &text) != SIGNRT_STATUS_OK) return fail("result");
        printf("%s\n", text);
        signrt_string_free(text);
        if (signrt_stream_reset(s) != SIGNRT_STATUS_OK) return fail("reset");
    }
    return 0;
}

static unsigned char clamp_round(float v) { v = roundf(v); return v < 0 ? 0 : v > 255 ? 255 : (unsigned char)v; }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s BUNDLE_DIR CLIP.y4m\n", argv[0]); return 2; }
    FILE *in = fopen(argv[2], "rb");
    if (!in) { perror(argv[2]); return 1; }
    /* 1. The Y4M header: size, chroma and range (the frame rate stays at the default 25). */
    char head[256];
    if (!fgets(head, sizeof head, in) || strncmp(head, "YUV4MPEG2 ", 10) != 0) {
        fprintf(stderr, "error: %s: not a Y4M file\n", argv[2]); return 1;
    }
    unsigned w = 0, h = 0; int c444 = 0, full = strstr(head, "XCOLORRANGE=FULL") != NULL;
    for (char *t = strtok(head + 10, " \n"); t; t = strtok(NULL, " \n")) {
        if (t[0] == 'W') w = (unsigned)atoi(t + 1);
        if (t[0] == 'H') h = (unsigned)atoi(t + 1);
        if (t[0] == 'C') c444 = strncmp(t + 1, "444", 3) == 0 && t[4] == '\0';
        if (t[0] == 'C' && !c444 && strncmp(t + 1, "420", 3) != 0) {
            fprintf(stderr, "error: %s: colour space %s (use 420 or 444)\n", argv[2], t); return 1;
        }
    }
    size_t cw = c444 ? w : (w + 1) / 2, ch = c444 ? h : (h + 1) / 2;
    size_t ysize = (size_t)w * h, csize = cw * ch;
    unsigned char *yuv = malloc(ysize + 2 * csize), *rgb = malloc(ysize * 3);
    /* 2. A recogniser for the bundle, with the default options, and one stream. */
    SignrtRecognizer *rec = NULL;
    SignrtStream *stream = NULL;
    if (signrt_recognizer_create(argv[1], NULL, &rec) != SIGNRT_STATUS_OK) return fail(argv[1]);
    if (signrt_stream_create(rec, &stream) != SIGNRT_STATUS_OK) return fail("stream");
    /* 3. Each frame: push it, decode what is ready, print a sentence when one ends. */
    char tag[64];
    while (fgets(tag, sizeof tag, in) && strncmp(tag, "FRAME", 5) == 0) {
        if (fread(yuv, 1, ysize + 2 * csize, in) != ysize + 2 * csize) break;
        SignrtFrame f = { .width = w, .height = h, .full_range = full };
        if (c444) { /* BT.601, as signrt converts YUV */
            float yk = full ? 1.0f : 255.0f / 219.0f, yo = full ? 0.0f : 16.0f, ck = full ? 1.0f : 255.0f / 224.0f;
            for (size_t i = 0; i < ysize; i++) {
                float y = (yuv[i] - yo) * yk, u = (yuv[ysize + i] - 128.0f) * ck, v = (yuv[ysize + csize + i] - 128.0f) * ck;
                rgb[3 * i] = clamp_round(y + 1.402f * v);
                rgb[3 * i + 1] = clamp_round(y - 0.344136f * u - 0.714136f * v);
                rgb[3 * i + 2] = clamp_round(y + 1.772f * u);
            }
            f.format = SIGNRT_PIXEL_FORMAT_RGB24;
            f.planes[0] = rgb;
        } else {
            f.format = SIGNRT_PIXEL_FORMAT_I420;
            f.planes[0] = yuv; f.planes[1] = yuv + ysize; f.planes[2] = yuv + ysize + csize;
        }
        if (signrt_stream_accept_frame(stream, &f) != SIGNRT_STATUS_OK) return fail("frame");
        if (drain(stream)) return 1;
    }
    /* 4. The end of the input: the last sentence is decoded and printed. */
    signrt_stream_input_finished(stream);
    if (drain(stream)) return 1;
    signrt_stream_destroy(stream);
    signrt_recognizer_destroy(rec);
    free(yuv); free(rgb); fclose(in);
    return 0;
}
