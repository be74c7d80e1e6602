"""Named reconstruction recipes composed from imaging/, inference/, io/ and metrics/ parts, each
registered by name in :mod:`~cryolens.methods.registry` (the CLI and the benchmark read it).

- ``backprojection`` (:mod:`~cryolens.methods.backprojection`): homogeneous map from known poses and CTFs.
- ``relion-class3d`` (:mod:`~cryolens.methods.class3d`): K classes, poses searched (RELION Class3D).
- ``cryosparc-abinit``, ``cryosparc-abinit-hetero`` (:mod:`~cryolens.methods.abinit`): ab initio from
  random starts, then refinement (homogeneous) or Class3D (K classes).
- ``relion-refine3d``, ``cryosparc-refine`` (:mod:`~cryolens.methods.refine3d`): gold-standard refinement
  from an initial map, full pose posterior (RELION) or modal poses by hierarchical search (cryoSPARC).
- ``cryodrgn``, ``cryodrgn-homo``, ``cryodrgn-autodecoder`` (:mod:`~cryolens.methods.cryodrgn`) and
  ``cryodrgn2`` (:mod:`~cryolens.methods.cryodrgn2`): neural volumes, amortized or per-image z, ab initio.
- ``cryoai``, ``cryoposenet`` (:mod:`~cryolens.methods.cryoai`, :mod:`~cryolens.methods.cryoposenet`): ab initio
  with amortized poses (pose encoder), neural Fourier volume or real-space voxels.
- ``cryogan``, ``multi-cryogan`` (:mod:`~cryolens.methods.cryogan`, :mod:`~cryolens.methods.multi_cryogan`):
  likelihood-free, the physics as a GAN generator (WGAN-GP) of one map or of a population of maps;
  ``cryovaegan`` (:mod:`~cryolens.methods.cryovaegan`): a 2D VAE-GAN, in-plane angle and defocus from z.
- ``3dflex`` (:mod:`~cryolens.methods.flex3d`): a canonical map convected along a flow decoded from z.
- ``fstdiff`` (:mod:`~cryolens.methods.fstdiff`): variational q(V) per Fourier voxel and q(R, t) per image.
- ``e2gmm``, ``cryofold``, ``atomvae`` (:mod:`~cryolens.methods.e2gmm`, :mod:`~cryolens.methods.cryofold`,
  :mod:`~cryolens.methods.atomvae`): Gaussian mixtures moved by z (free blobs, or the residues / atoms of a
  model; atomic models out). ``multibody`` (:mod:`~cryolens.methods.multibody`): the chains of a model as rigid
  bodies moved by z, each reconstructed from every image in its own frame.
"""

from .registry import Known, MethodOutputs, Recipe, get, recipes, register, unregister

# Each recipe names its fit and config as "module:attribute": its module (and what it imports) is loaded
# when the recipe is first used, so a command imports only the recipes it runs.

register(Recipe(
    name="backprojection", fit=".backprojection:fit", config=".backprojection:BackprojectionConfig",
    summary="CTF-weighted Fourier insertion with a per-shell Wiener/MAP filter, gold-standard half-maps",
    needs=frozenset({"poses", "ctf"}),
    heterogeneity="homogeneous", learned=False, reference="RELION relion_reconstruct (Scheres 2012)"), replace=True)


register(Recipe(
    name="relion-class3d", fit=".class3d:fit", config=".class3d:Class3DConfig",
    summary="K-class EM over class × rotation × shift, class priors, T-scaled tau2 prior (RELION Class3D)",
    needs=frozenset({"ctf"}), heterogeneity="discrete", learned=False,
    reference="Scheres 2012 (J. Struct. Biol. 180:519); RELION 3.1 relion_refine --K"), replace=True)


register(Recipe(
    name="cryosparc-abinit", fit=".abinit:fit", config=".abinit:AbinitRecipeConfig",
    summary="ab initio from a random start (SGD/online EM, poses marginalised per mini-batch), then auto-refine",
    needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=False,
    reference="Punjani et al. 2017 (Nat. Methods 14:290), cryoSPARC ab initio; refinement as RELION auto-refine"),
    replace=True)
register(Recipe(
    name="cryosparc-abinit-hetero", fit=".abinit:fit", config=".abinit:AbinitRecipeConfig",
    summary="multi-class ab initio from K random starts, then Class3D from the K maps",
    defaults={"n_classes": 2}, needs=frozenset({"ctf"}), heterogeneity="discrete",
    learned=False, reference="Punjani et al. 2017 (Nat. Methods 14:290), cryoSPARC multi-class ab initio"),
    replace=True)


register(Recipe(
    name="relion-refine3d", fit=".refine3d:fit", config=".refine3d:Refine3DConfig",
    summary="gold-standard auto-refinement, full pose posterior (adaptive oversampling), MAP with tau2 from the FSC",
    needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=False,
    reference="RELION 3.1 relion_refine --auto_refine (Scheres 2012)"), replace=True)
register(Recipe(
    name="cryosparc-refine", fit=".refine3d:fit", config=".refine3d:Refine3DConfig",
    summary="gold-standard homogeneous refinement, modal poses by hierarchical search with frequency marching",
    defaults={"lowpass": 30.0, "pose_inference": "modal"}, needs=frozenset({"ctf"}), heterogeneity="homogeneous",
    learned=False, reference="cryoSPARC homogeneous refinement (Punjani 2017); cryoDRGN2 pose search (Zhong 2021)"),
    replace=True)

# --- cryoDRGN family (methods/cryodrgn.py, methods/cryodrgn2.py) ---

_DRGN_REF = "Zhong et al. 2021, Nat. Methods (cryoDRGN 4.3 train_vae / train_nn / train_dec)"
register(Recipe(
    name="cryodrgn", fit=".cryodrgn:fit", config=".cryodrgn:CryoDRGNConfig",
    summary="neural volume V(k, z) + amortized MLP encoder q(z|image), β-VAE in Hartley space; poses, CTF known",
    needs=frozenset({"poses", "ctf"}), heterogeneity="continuous",
    learned=True, reference=_DRGN_REF), replace=True)
register(Recipe(
    name="cryodrgn-homo", fit=".cryodrgn:fit_homo", config=".cryodrgn:CryoDRGNHomoConfig",
    summary="neural volume without z (cryoDRGN train_nn); poses, CTF known",
    needs=frozenset({"poses", "ctf"}), heterogeneity="homogeneous", learned=True, reference=_DRGN_REF),
    replace=True)
register(Recipe(
    name="cryodrgn-autodecoder", fit=".cryodrgn:fit_autodecoder", config=".cryodrgn:AutodecoderConfig",
    summary="neural volume + one free z per image (train_dec); variational=true: mean + variance per image",
    needs=frozenset({"poses", "ctf"}), heterogeneity="continuous", learned=True, reference=_DRGN_REF),
    replace=True)


register(Recipe(
    name="cryodrgn2", fit=".cryodrgn2:fit", config=".cryodrgn2:CryoDRGN2Config",
    summary="ab initio: neural volume + frequency-marching hierarchical pose search (heterogeneous=true adds z)",
    needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=True,
    reference="Zhong et al. 2021, ICCV (cryoDRGN2; cryoDRGN abinit_homo_old / abinit_het_old)"), replace=True)

# --- amortized pose inference (methods/amortized_pose.py, methods/cryoai.py, methods/cryoposenet.py) ---

register(Recipe(
    name="cryoai", fit=".cryoai:fit", config=".cryoai:CryoAIConfig",
    summary="ab initio: CNN pose encoder (S2S2 + shift) + neural Fourier volume, symmetrized Hartley loss with CTF",
    needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=True,
    reference="Levy et al. 2022, ECCV (cryoAI; compSPI/cryoAI)"), replace=True)
register(Recipe(
    name="cryoposenet", fit=".cryoposenet:fit", config=".cryoposenet:CryoPoseNetConfig",
    summary="ab initio: CNN pose encoder + real-space voxel grid, real-space projection, CTF, L2 loss",
    needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=True,
    reference="Nashed et al. 2021, ICCV workshops (CryoPoseNet)"), replace=True)

# --- adversarial, likelihood-free (methods/adversarial.py, methods/cryogan.py) ---

register(Recipe(
    name="cryogan", fit=".cryogan:fit", config=".cryogan:CryoGANConfig",
    summary="likelihood-free: real-space voxel map as a simulator (poses from the SO(3) prior, CTFs from the data, "
            "noise) trained against a CNN critic (WGAN-GP); no per-image inference",
    needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=True,
    reference="Gupta, McCann, Donati, Unser 2021, IEEE Trans. Comput. Imaging 7:759 (CryoGAN)"), replace=True)


register(Recipe(
    name="multi-cryogan", fit=".multi_cryogan:fit", config=".multi_cryogan:MultiCryoGANConfig",
    summary="likelihood-free heterogeneity: a map generator z ~ N(0, I) -> V(z) (voxel decoder) in CryoGAN's "
            "simulator, WGAN-GP; sampled maps and their k-means centres with populations",
    needs=frozenset({"ctf"}), heterogeneity="continuous", learned=True,
    reference="Gupta, Phan, Yoo, Unser 2020, ECCV (Multi-CryoGAN); generator architecture ours"), replace=True)


register(Recipe(
    name="cryovaegan", fit=".cryovaegan:fit", config=".cryovaegan:CryoVAEGANConfig",
    summary="2D VAE-GAN on the images (encoder, decoder with a learned scale, discriminator); in-plane angle and "
            "defocus read off the latent; no 3D map",
    needs=frozenset({"ctf"}), heterogeneity="continuous", learned=True,
    reference="Miolane, Poitevin, Li, Holmes 2020, CVPR workshops (CryoVAEGAN; ninamiolane/vaetree)"), replace=True)

# --- 3DFlex (methods/flex3d.py) ---

register(Recipe(
    name="3dflex", fit=".flex3d:fit", config=".flex3d:Flex3DConfig",
    summary="canonical real-space map convected along an MLP flow from z on a coarse mesh (rigidity, latent noise); "
            "flow by SGD, canonical map by L-BFGS per half-set with the flows fixed; poses, CTF known",
    needs=frozenset({"poses", "ctf"}), heterogeneity="continuous", learned=True,
    reference="Punjani & Fleet 2023, Nat. Methods (3DFlex; bioRxiv 10.1101/2021.04.22.440893)"), replace=True)

# --- variational inference on the volume and the poses (methods/fstdiff.py) ---

register(Recipe(
    name="fstdiff", fit=".fstdiff:fit", config=".fstdiff:FSTdiffConfig",
    summary="variational q(V) per Fourier voxel + q(R, t) per image (Lie-algebra Gaussian) or encoder; ELBO, std map",
    needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=True,
    reference="Ullrich et al. 2019, arXiv 1906.07582 (FSTdiff; KarenUllrich/Pytorch-Backprojection)"), replace=True)

# --- Gaussian mixtures (methods/e2gmm.py) ---

register(Recipe(
    name="e2gmm", fit=".e2gmm:fit", config=".e2gmm:E2GMMConfig",
    summary="Gaussian mixture (fitted to the consensus map, or residues of a model) moved by an MLP of z; encoder "
            "on per-image FRC gradients; FRC loss; poses, CTF known",
    needs=frozenset({"poses", "ctf"}), heterogeneity="continuous", learned=True,
    reference="Chen & Ludtke 2021, Nat. Methods 18:930 (EMAN2 e2gmm_refine_new.py)"), replace=True)


register(Recipe(
    name="cryofold", fit=".cryofold:fit", config=".cryofold:CryoFoldConfig",
    summary="one Gaussian per residue of a given model, moved by an MLP of z; VAE on z, Gaussian likelihood, "
            "Ca-distance and pull-to-base restraints; poses, CTF known",
    needs=frozenset({"poses", "ctf"}), heterogeneity="continuous", learned=True,
    reference="Zhong, Lerer, Davis & Berger 2021, arXiv 2107.01331 (no public code)"), replace=True)


register(Recipe(
    name="atomvae", fit=".atomvae:fit", config=".atomvae:AtomVAEConfig",
    summary="base atomic model + MLP(z) displacements, one Gaussian per atom; encoders for z and the pose, "
            "pose-only warm-up then joint; Gaussian likelihood, beta-KL, bond and pull terms; CTF known",
    needs=frozenset({"ctf"}), heterogeneity="continuous", learned=True,
    reference="Rosenbaum et al. 2021, arXiv 2106.14108 (no public code)"), replace=True)


register(Recipe(
    name="multibody", fit=".multibody:fit", config=".multibody:MultibodyConfig",
    summary="the chains of a given model as rigid bodies moved by an MLP of z (VAE, as cryofold), then each chain "
            "back-projected from every image in its own frame; poses, CTF known",
    needs=frozenset({"poses", "ctf"}), heterogeneity="continuous", learned=True,
    reference="Nakane et al. 2018, eLife 7:e36861 (RELION multi-body); motions learned as Zhong et al. 2021"),
    replace=True)
