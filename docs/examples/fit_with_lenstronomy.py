"""Fits a simulated lens with lenstronomy, the likelihood on lensjax's predicted arcs (docs/lens-modelling.md).

  python docs/examples/fit_with_lenstronomy.py RUN_DIR --out /tmp/lens_fit [--index 7]

1. Renders simulated lens INDEX (lensjax's simulator: one smooth Sersic source, Gaussian noise of a single
   257 s exposure, the arcs' brightest pixels at a signal-to-noise of about 70) and writes it as a FITS cutout
   with a sky WCS (0.031 arcsec pixels).
2. Runs `python -m lensjax.predict RUN_DIR cutout.fits --out OUT --lenstronomy-mask`: cutout.fits (masks with
   the input's WCS), predictions.csv and cutout_likelihood_mask.npy.
3. Draws OUT/overlay_check.png: the arcs mask of OUT/cutout.fits placed on the input through the two files'
   own WCS (astropy's WCSAxes), the check that the masks line up on the sky as they would in DS9.
4. Fits SIE + external shear, a Sersic lens light and a Sersic source with lenstronomy's FittingSequence (PSO,
   then MCMC for the errors), the likelihood evaluated on the mask's pixels only, starting from the catalog's
   Einstein-radius proxy and lens centroid; prints the fitted theta_E with its error next to the truth, and
   writes OUT/fit.json.

Needs the `bench` (lenstronomy) and `fits` (astropy) extras. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
from astropy import wcs as astropy_wcs
from astropy.io import fits
from lenstronomy.Workflow.fitting_sequence import FittingSequence
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lensjax import config as cfg
from lensjax.sim import Simulator, scenes
from lensjax.sim.simulator import noise_model

# A sky position for the cutout's WCS (any would do).
SKY_CENTRE_DEG = (150.1163, 2.2058)


def render_lens(index: int) -> tuple[cfg.SimConfig, np.ndarray, dict]:
  """(config, observed (H, W) counts, the scene's lenstronomy kwargs) of simulated lens `index`."""
  config = cfg.SimConfig(noise="gaussian", num_exposures=1, lens_fraction=1.0, clumps_max=0, field_galaxies_max=0)
  simulator = Simulator(config, seed=2026)
  observed = simulator.render([index])["observed"][0]
  scene = {name: values[0] for name, values in simulator.scenes([index]).items()}
  return config, observed, scenes.scene_to_lenstronomy(scene)


def write_cutout(path: pathlib.Path, observed: np.ndarray, pixel_scale: float) -> None:
  """`observed` as a FITS image with a TAN WCS of `pixel_scale` arcsec pixels, north up, east left."""
  header = fits.Header()
  height, width = observed.shape
  header.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": SKY_CENTRE_DEG[0],
                 "CRVAL2": SKY_CENTRE_DEG[1], "CRPIX1": (width + 1) / 2, "CRPIX2": (height + 1) / 2,
                 "CDELT1": -pixel_scale / 3600, "CDELT2": pixel_scale / 3600, "CUNIT1": "deg", "CUNIT2": "deg",
                 "RADESYS": "ICRS", "BUNIT": "counts"})
  fits.PrimaryHDU(observed.astype(np.float32), header=header).writeto(path, overwrite=True)


def overlay_check(cutout: pathlib.Path, prediction: pathlib.Path, path: pathlib.Path) -> float:
  """Draws the input image on its own WCS with the arcs mask's outline placed through the prediction's WCS;
  returns the largest sky separation (arcsec) between the two WCS's positions of the mask's pixels."""
  with fits.open(cutout) as given, fits.open(prediction) as predicted:
    image, sky_in = given[0].data, astropy_wcs.WCS(given[0].header)
    arcs, sky_out = predicted["ARCS_MASK"].data, astropy_wcs.WCS(predicted["ARCS_MASK"].header)
    rows, columns = np.nonzero(arcs)
    separation = sky_in.pixel_to_world(columns, rows).separation(sky_out.pixel_to_world(columns, rows))
    figure = Figure(figsize=(5.5, 5), dpi=100, layout="constrained")
    axes = figure.add_subplot(projection=sky_in)
    axes.imshow(np.arcsinh(image / np.percentile(image, 99)), cmap="gray", origin="lower")
    axes.contour(arcs, levels=[0.5], colors="cyan", linewidths=0.8, transform=axes.get_transform(sky_out))
    axes.set_xlabel("RA")
    axes.set_ylabel("Dec")
    axes.set_title("ARCS_MASK of the prediction, placed by its own WCS", fontsize="small")
    FigureCanvasAgg(figure).print_png(str(path))
  return float(separation.max().to_value("arcsec"))


def fit(config: cfg.SimConfig, observed: np.ndarray, mask: np.ndarray, start: dict) -> dict:
  """lenstronomy's PSO then MCMC on the masked pixels; returns the best fit and theta_E's posterior spread."""
  size, scale = config.image_size, config.pixel_scale
  noise = noise_model(config)
  origin = -(size - 1) / 2 * scale             # lensjax's grid: (0, 0) is the image centre
  kwargs_data = dict(image_data=observed.astype(np.float64), background_rms=noise.background_sigma,
                     exposure_time=noise.electrons_per_count, ra_at_xy_0=origin, dec_at_xy_0=origin,
                     transform_pix2angle=np.diag([scale, scale]))
  kwargs_psf = dict(psf_type="GAUSSIAN", fwhm=config.psf_fwhm, truncation=config.psf_truncation)
  kwargs_model = dict(lens_model_list=["SIE", "SHEAR"], lens_light_model_list=["SERSIC_ELLIPSE"],
                      source_light_model_list=["SERSIC_ELLIPSE"])
  # The catalog's lens centroid is good to a pixel or two: the lens (and its light) stay within 5 pixels of it.
  x, y, radius, box = start["x"], start["y"], start["theta_E"], 5 * scale
  lens = ([dict(theta_E=radius, e1=0.0, e2=0.0, center_x=x, center_y=y), dict(gamma1=0.0, gamma2=0.0, ra_0=0, dec_0=0)],
          [dict(theta_E=0.2, e1=0.1, e2=0.1, center_x=scale, center_y=scale), dict(gamma1=0.05, gamma2=0.05)],
          [{}, dict(ra_0=0, dec_0=0)],
          [dict(theta_E=0.1, e1=-0.5, e2=-0.5, center_x=x - box, center_y=y - box), dict(gamma1=-0.3, gamma2=-0.3)],
          [dict(theta_E=3.0, e1=0.5, e2=0.5, center_x=x + box, center_y=y + box), dict(gamma1=0.3, gamma2=0.3)])
  light = lambda cx, cy, r, n, reach: (
      [dict(R_sersic=r, n_sersic=n, e1=0.0, e2=0.0, center_x=cx, center_y=cy)],
      [dict(R_sersic=r / 2, n_sersic=n / 2, e1=0.1, e2=0.1, center_x=reach / 4, center_y=reach / 4)], [{}],
      [dict(R_sersic=0.01, n_sersic=0.5, e1=-0.5, e2=-0.5, center_x=cx - reach, center_y=cy - reach)],
      [dict(R_sersic=3.0, n_sersic=8.0, e1=0.5, e2=0.5, center_x=cx + reach, center_y=cy + reach)])
  kwargs_params = dict(lens_model=lens, lens_light_model=light(x, y, 0.5, 4.0, box),
                       source_model=light(x, y, 0.1, 1.0, 1.0))
  kwargs_likelihood = dict(image_likelihood_mask_list=[mask.astype(bool)], check_bounds=True)
  sequence = FittingSequence(dict(multi_band_list=[[kwargs_data, kwargs_psf, {"supersampling_factor": 1}]],
                                  multi_band_type="single-band"),
                             kwargs_model, dict(joint_lens_with_light=[[0, 0, ["center_x", "center_y"]]]),
                             kwargs_likelihood, kwargs_params)
  # A wide particle swarm, a narrow one from its best point, then MCMC for the posterior.
  chain = sequence.fit_sequence([["PSO", dict(sigma_scale=1.0, n_particles=100, n_iterations=250)],
                                 ["PSO", dict(sigma_scale=0.1, n_particles=100, n_iterations=150)],
                                 ["MCMC", dict(n_burn=600, n_run=200, walkerRatio=4, sigma_scale=0.05,
                                               progress=False)]])
  _, samples, names, _ = chain[-1]
  theta_e = samples[:, names.index("theta_E_lens0")]
  best = sequence.best_fit()
  return {"theta_E_best": float(best["kwargs_lens"][0]["theta_E"]), "theta_E_mean": float(theta_e.mean()),
          "theta_E_std": float(theta_e.std()), "samples": int(theta_e.size),
          "masked_pixels": int(mask.sum()), "reduced_chi2": float(sequence.best_fit_likelihood() * -2 / mask.sum())}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("run_dir", help="a trained lensjax run (e.g. runs/default)")
  parser.add_argument("--out", default="lens_fit", help="folder for the cutout, prediction and fit")
  parser.add_argument("--index", type=int, default=7, help="which simulated lens")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  (out / "input").mkdir(parents=True, exist_ok=True)
  config, observed, truth = render_lens(args.index)
  write_cutout(out / "input" / "cutout.fits", observed, config.pixel_scale)
  subprocess.run([sys.executable, "-m", "lensjax.predict", args.run_dir, str(out / "input" / "cutout.fits"),
                  "--out", str(out / "prediction"), "--lenstronomy-mask"], check=True)
  separation = overlay_check(out / "input" / "cutout.fits", out / "prediction" / "cutout.fits",
                             out / "overlay_check.png")
  with open(out / "prediction" / "predictions.csv") as file:
    row = next(csv.DictReader(file))
  middle = (config.image_size - 1) / 2
  start = dict(theta_E=float(row["arc_radius_arcsec"]), x=(float(row["lens_x_px"]) - middle) * config.pixel_scale,
               y=(float(row["lens_y_px"]) - middle) * config.pixel_scale)
  result = fit(config, observed, np.load(out / "prediction" / "cutout_likelihood_mask.npy"), start)
  true_theta_e = truth["lens"][1][0]["theta_E"]
  result.update(index=args.index, theta_E_true=true_theta_e, catalog_radius_arcsec=start["theta_E"],
                mask_sky_separation_arcsec=separation,
                pulls_sigma=(result["theta_E_mean"] - true_theta_e) / result["theta_E_std"])
  (out / "fit.json").write_text(json.dumps(result, indent=2) + "\n")
  print(f"theta_E: true {true_theta_e:.4f}\", catalog proxy {start['theta_E']:.4f}\", lenstronomy fit "
        f"{result['theta_E_mean']:.4f} +/- {result['theta_E_std']:.4f}\" ({result['pulls_sigma']:+.1f} sigma) on "
        f"{result['masked_pixels']} masked pixels (reduced chi2 {result['reduced_chi2']:.2f}); the arcs mask's pixels "
        f"are {separation:.2g}\" from the input's on the sky; wrote {out / 'fit.json'} and {out / 'overlay_check.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
