"""One module per stage; each stage is a plain function the `actrec` CLI calls, and stages talk through files in
the run directory (pipeline.rundir.RunDir):

    preprocess(config, run_dir)  raw clips -> RUN/features/        (preprocess_beam: the same as an Apache Beam pipeline)
    train(config, run_dir)       RUN/features/ -> RUN/model.keras
    evaluate(run_dir)            raw clips + model -> RUN/eval/<name>/
    export(run_dir)              model -> RUN/export/ (SavedModel, TFLite, parity.json)
    predict(run_dir, paths)      raw files -> labels (and timelines)
    demo(out)                    all of them on the embedded data

Stages use the building blocks (media, features, models, runtime, deploy); no building block imports a stage.
"""
