// Trilinear insertion of central slices into a padded Fourier staging grid: the compiled form of
// cryolens.imaging.slice.scatter_slices (see its docstring and docs/CONVENTIONS.md for the layouts).
//
// staging: `nch` planes of g^3 values (g = padded + 2), indexed [z][y][x], or voxel-major (g^3, nch); channels (re, im, weight) for
// complex slices, (value, weight) for real ones. For each image n, slice row y (0..d-1) and column
// cols[c], the pixel's frequency f = ((x - d/2) / d, (y - d/2) / d) cycles/px is rotated into the volume
// frame, p = R_n f (rows of R_n: image -> volume), and placed at padded-grid coordinate p * padded +
// padded / 2; its values times mult[y][c] (0 beyond Nyquist, 1/2 on self-partnered columns) times the
// 8 trilinear corner weights are added at the 8 corners. Geometry in double precision; sums in T.
// half != 0: the staging grid holds only the kx >= 0 half, g * g * (padded/2 + 2) values indexed [z][y][x] with
// x = kx (0 .. padded/2 + 1, not centred) and y, z centred as above; a pixel whose rotated frequency has
// kx < 0 is placed at its Friedel mate -p with its complex value conjugated (a real volume's transform has
// F(-k) = conj F(k)); cryolens.imaging.half_grid finishes the kx = 0 and Nyquist planes.
// Built by cryolens.imaging.native with the system C++ compiler and called through ctypes (which
// releases the GIL, so that two half-sets can be filled from two threads at once).

#include <cstddef>
#include <cstdint>
#include <vector>

namespace {

struct Footing {  // one slice pixel's lower corner (flat staging index), offsets from it, and its values
    int64_t base;
    double t[3];
    double v[3];
};

template <typename T, bool VOXEL_MAJOR>
void scatter(T* staging, int64_t nch, int64_t padded, int64_t n, int64_t d, const int64_t* cols, int64_t ncols,
             const double* mult, const double* rot, const T* values, int64_t is_complex, const T* weights,
             int64_t half) {
    const int64_t g = padded + 2;
    const int64_t gx = half ? padded / 2 + 2 : g;  // x extent of a plane row
    // channel c of voxel j: staging[c * g^3 + j] (channel planes) or staging[j * nch + c] (voxel-major: a
    // voxel's channels share a cache line, 3x fewer lines touched per corner)
    const int64_t chan = VOXEL_MAJOR ? 1 : g * g * gx;
    const int64_t vox = VOXEL_MAJOR ? nch : 1;
    T* out[3] = {staging, is_complex ? staging + chan : nullptr, staging + (nch - 1) * chan};
    const double centre = static_cast<double>(padded / 2);
    const double hi = static_cast<double>(padded);
    const int64_t stride = is_complex ? 2 : 1;
    std::vector<Footing> row(static_cast<std::size_t>(ncols));
    for (int64_t i = 0; i < n; ++i) {
        const double* r = rot + 9 * i;
        const T* val = values + i * d * d * stride;
        const T* wgt = weights ? weights + i * d * d : nullptr;
        for (int64_t y = 0; y < d; ++y) {
            const double fy = static_cast<double>(y - d / 2) / static_cast<double>(d);
            // pass 1: the footing of every pixel of the row, prefetching its corners (they are scattered
            // over the grid: a row's memory accesses then overlap instead of waiting one after the other)
            int64_t cnt = 0;
            for (int64_t c = 0; c < ncols; ++c) {
                const double m = mult[y * ncols + c];
                if (m == 0.0) continue;
                const int64_t x = cols[c];
                const double fx = static_cast<double>(x - d / 2) / static_cast<double>(d);
                Footing& f = row[cnt++];
                int64_t ip[3];
                double p[3];
                for (int k = 0; k < 3; ++k) p[k] = (r[3 * k] * fx + r[3 * k + 1] * fy) * padded;
                // the half grid: kx < 0 goes to the Friedel mate (-p, conjugated)
                const double flip = (half && p[0] < 0.0) ? -1.0 : 1.0;
                for (int k = 0; k < 3; ++k) {
                    double q = flip * p[k] + ((half && k == 0) ? 0.0 : centre);
                    const double top = (half && k == 0) ? centre : hi;
                    q = q < 0.0 ? 0.0 : (q > top ? top : q);  // inside Nyquist already; guards rounding
                    ip[k] = static_cast<int64_t>(q);  // q >= 0: truncation is the floor
                    f.t[k] = q - static_cast<double>(ip[k]);
                }
                f.base = (ip[2] * g + ip[1]) * gx + ip[0];
                const int64_t pix = y * d + x;
                f.v[0] = static_cast<double>(val[pix * stride]) * m;
                f.v[1] = is_complex ? flip * static_cast<double>(val[pix * stride + 1]) * m : 0.0;
                f.v[2] = (wgt ? static_cast<double>(wgt[pix]) : 1.0) * m;
                for (int dz = 0; dz < 2; ++dz)
                    for (int dy = 0; dy < 2; ++dy)
                        for (int ch = 0; ch < 3; ++ch)
                            if (out[ch]) __builtin_prefetch(out[ch] + (f.base + (dz * g + dy) * gx) * vox, 1);
            }
            // pass 2: the values times the 8 trilinear weights added at the corners
            for (int64_t c = 0; c < cnt; ++c) {
                const Footing& f = row[c];
                const double wx[2] = {1.0 - f.t[0], f.t[0]}, wy[2] = {1.0 - f.t[1], f.t[1]};
                const double wz[2] = {1.0 - f.t[2], f.t[2]};
                for (int dz = 0; dz < 2; ++dz) {
                    for (int dy = 0; dy < 2; ++dy) {
                        const double wzy = wz[dz] * wy[dy];
                        const int64_t at = f.base + (dz * g + dy) * gx;
                        for (int dx = 0; dx < 2; ++dx) {
                            const double t = wzy * wx[dx];
                            for (int ch = 0; ch < 3; ++ch)
                                if (out[ch]) out[ch][(at + dx) * vox] += static_cast<T>(f.v[ch] * t);
                        }
                    }
                }
            }
        }
    }
}

}  // namespace

extern "C" {

#define CRYOLENS_SCATTER(name, T, MAJOR)                                                                           \
    void name(T* staging, int64_t nch, int64_t padded, int64_t n, int64_t d, const int64_t* cols, int64_t ncols,   \
              const double* mult, const double* rot, const T* values, int64_t is_complex, const T* weights,      \
              int64_t half) {                                                                                     \
        scatter<T, MAJOR>(staging, nch, padded, n, d, cols, ncols, mult, rot, values, is_complex, weights, half);  \
    }

CRYOLENS_SCATTER(cryolens_scatter_f32, float, false)
CRYOLENS_SCATTER(cryolens_scatter_f64, double, false)
CRYOLENS_SCATTER(cryolens_scatter_voxel_major_f32, float, true)
CRYOLENS_SCATTER(cryolens_scatter_voxel_major_f64, double, true)

int cryolens_native_version() { return 4; }

}
