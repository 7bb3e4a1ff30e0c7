"""DARTS for facial landmarks: primitives, genotypes, the CIFAR-10 network, the landmark network,
the search supernet and drawings.

    build_darts(model_cfg) -> DartsLandmarkNet          registered as model name "darts"
    NetworkCIFAR(C, num_classes, layers, auxiliary, genotype)
    train_cifar(root, out_path, epochs, ...) -> dict     DARTS CIFAR-10 recipe, atomic checkpoint
    load_cifar_state_dict(path) -> (state_dict, meta)    released cifar10_model.pt or ours
    transfer_cifar_cells(landmark_net, state_dict, genotype=None) -> report
    resolve_pretrained(checkpoint, cifar_root, out_path) -> {"status", "path", "message"}
    build_supernet(cfg) -> DartsSupernet                 for nbutils.engine.search.search
    parse_genotype(spec) -> Genotype; plot_genotype(...); plot_alpha_history(...)
"""
from .cifar import NetworkCIFAR, count_parameters, load_cifar10, load_cifar_state_dict, train_cifar
from .genotypes import (DARTS, DARTS_V1, DARTS_V2, GENOTYPES, PRIMITIVES, Genotype, genotype_to_dict,
                        parse_genotype)
from .landmark import (DARTS_MODEL_DEFAULTS, DartsLandmarkNet, apply_cifar_pretrained, build_darts,
                       resolve_pretrained, transfer_cifar_cells)
from .plotting import plot_alpha_history, plot_genotype
from .search import SUPERNET_DEFAULTS, DartsSupernet, build_supernet, derive_genotype

from .. import register_model  # nbutils.models defines the registry before it imports this package

register_model("darts")(build_darts)

__all__ = ["NetworkCIFAR", "count_parameters", "load_cifar10", "load_cifar_state_dict", "train_cifar", "DARTS",
           "DARTS_V1", "DARTS_V2", "GENOTYPES", "PRIMITIVES", "Genotype", "genotype_to_dict", "parse_genotype",
           "DARTS_MODEL_DEFAULTS", "DartsLandmarkNet", "apply_cifar_pretrained", "build_darts",
           "resolve_pretrained", "transfer_cifar_cells", "plot_alpha_history", "plot_genotype",
           "SUPERNET_DEFAULTS", "DartsSupernet", "build_supernet", "derive_genotype"]
