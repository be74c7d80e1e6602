// Trilinear insertion of central slices into a padded Fourier staging grid: the compiled form of
// cryolens.imaging.slice.scatter_slices (see its docstring and docs/CONVENTIONS.md for the layouts).
//
// staging: `nch` planes of g^3 values (g = padded + 2), indexed [z][y][x]; channels (re, im, weight) for
// complex slices, (value, weight) for real ones. For each image n, slice row y (0..d-1) and column
// cols[c], the pixel's frequency f = ((x - d/2) / d, (y - d/2) / d) cycles/px is rotated into the volume
// frame, p = R_n f (rows of R_n: image -> volume), and placed at padded-grid coordinate p * padded +
// padded / 2; its values times mult[y][c] (0 beyond Nyquist, 1/2 on self-partnered columns) times the
// 8 trilinear corner weights are added at the 8 corners. Geometry in double precision; sums in T.
// Built by cryolens.imaging.native with the system C++ compiler and called through ctypes (which
// releases the GIL, so that two half-sets can be filled from two threads at once).

#include <cstdint>

namespace {

template <typename T>
void scatter(T* staging, int64_t nch, int64_t padded, int64_t n, int64_t d, const int64_t* cols, int64_t ncols,
             const double* mult, const double* rot, const T* values, int64_t is_complex, const T* weights) {
    const int64_t g = padded + 2;
    const int64_t plane = g * g * g;
    T* out_v0 = staging;
    T* out_v1 = is_complex ? staging + plane : nullptr;
    T* out_w = staging + (nch - 1) * plane;
    const double centre = static_cast<double>(padded / 2);
    const double hi = static_cast<double>(padded);
    const int64_t stride = is_complex ? 2 : 1;
    for (int64_t i = 0; i < n; ++i) {
        const double* r = rot + 9 * i;
        const T* val = values + i * d * d * stride;
        const T* wgt = weights ? weights + i * d * d : nullptr;
        for (int64_t y = 0; y < d; ++y) {
            const double fy = static_cast<double>(y - d / 2) / static_cast<double>(d);
            for (int64_t c = 0; c < ncols; ++c) {
                const double m = mult[y * ncols + c];
                if (m == 0.0) continue;
                const int64_t x = cols[c];
                const double fx = static_cast<double>(x - d / 2) / static_cast<double>(d);
                double p[3];
                for (int k = 0; k < 3; ++k) {
                    const double q = (r[3 * k] * fx + r[3 * k + 1] * fy) * padded + centre;
                    p[k] = q < 0.0 ? 0.0 : (q > hi ? hi : q);  // inside Nyquist already; guards rounding
                }
                // p >= 0: truncation is the floor (and much cheaper than std::floor without SSE4.1)
                const int64_t ix = static_cast<int64_t>(p[0]), iy = static_cast<int64_t>(p[1]),
                              iz = static_cast<int64_t>(p[2]);
                const double fx1 = p[0] - ix, fy1 = p[1] - iy, fz1 = p[2] - iz;
                const double wx[2] = {1.0 - fx1, fx1}, wy[2] = {1.0 - fy1, fy1}, wz[2] = {1.0 - fz1, fz1};
                const int64_t base = (iz * g + iy) * g + ix;
                const int64_t pix = y * d + x;
                const double v0 = static_cast<double>(val[pix * stride]) * m;
                const double v1 = is_complex ? static_cast<double>(val[pix * stride + 1]) * m : 0.0;
                const double w = (wgt ? static_cast<double>(wgt[pix]) : 1.0) * m;
                for (int dz = 0; dz < 2; ++dz) {
                    for (int dy = 0; dy < 2; ++dy) {
                        const double wzy = wz[dz] * wy[dy];
                        const int64_t row = base + dz * g * g + dy * g;
                        for (int dx = 0; dx < 2; ++dx) {
                            const double t = wzy * wx[dx];
                            out_v0[row + dx] += static_cast<T>(v0 * t);
                            if (out_v1) out_v1[row + dx] += static_cast<T>(v1 * t);
                            out_w[row + dx] += static_cast<T>(w * t);
                        }
                    }
                }
            }
        }
    }
}

}  // namespace

extern "C" {

void cryolens_scatter_f32(float* staging, int64_t nch, int64_t padded, int64_t n, int64_t d, const int64_t* cols,
                          int64_t ncols, const double* mult, const double* rot, const float* values,
                          int64_t is_complex, const float* weights) {
    scatter<float>(staging, nch, padded, n, d, cols, ncols, mult, rot, values, is_complex, weights);
}

void cryolens_scatter_f64(double* staging, int64_t nch, int64_t padded, int64_t n, int64_t d, const int64_t* cols,
                          int64_t ncols, const double* mult, const double* rot, const double* values,
                          int64_t is_complex, const double* weights) {
    scatter<double>(staging, nch, padded, n, d, cols, ncols, mult, rot, values, is_complex, weights);
}

int cryolens_native_version() { return 1; }

}
